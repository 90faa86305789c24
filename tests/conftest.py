"""Shared fixtures: one Fashion-MNIST data root, one offline Inception conversion and one local run
of the smoke preset per session."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMOKE_COMMAND = ".venv/bin/snakemake --cores all --config preset=smoke"
# The workflow lane (`pytest -m workflow`): the files below (Snakemake, its SLURM executor, the MLflow
# UI) and the tests marked `@pytest.mark.workflow` in place (whole commands end to end: real-data
# training, SIGKILL and resume, the bench and GPU-check scripts, metrics against their references on
# real images). Everything else is the fast lane (`pytest -m "not workflow"`), for every change.
WORKFLOW_FILES = ("test_workflow.py", "test_pipeline_smoke.py", "test_slurm_cluster.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in WORKFLOW_FILES:
            item.add_marker(pytest.mark.workflow)


def workflow_env(data_root, inception_cache):
    """The environment a test's snakemake runs in: this interpreter's tools first, the session's
    data and offline Inception cache."""
    return {
        **os.environ,
        "ESVAE_DATA": data_root,
        "ESVAE_CACHE": str(inception_cache),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """``$ESVAE_DATA`` when set, else a session folder (Fashion-MNIST unpacked there once)."""
    return os.environ.get("ESVAE_DATA") or str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def inception_cache(tmp_path_factory):
    """A cache folder holding the offline Inception weights, converted once per session."""
    from esvae.metrics.inception import resolve_inception_weights

    cache = tmp_path_factory.mktemp("esvae-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ESVAE_INCEPTION_WEIGHTS", raising=False)
        mp.setattr(torch.hub, "get_dir", lambda: str(cache / "no-hub"))
        resolve_inception_weights(cache_dir=cache)
    return cache


@pytest.fixture
def offline_inception(inception_cache, monkeypatch):
    """Isolate a test from any official weights on this machine: only the offline conversion is found."""
    monkeypatch.delenv("ESVAE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("ESVAE_CACHE", str(inception_cache))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(inception_cache / "no-hub"))
    return inception_cache


@pytest.fixture(scope="session")
def fad_autoencoder(tmp_path_factory, data_root):
    """A quickly trained Fashion-MNIST FAD autoencoder (CLI), statistics over test[:2000]."""
    from esvae.cli import main

    out = tmp_path_factory.mktemp("fad")
    assert (
        main(
            [
                "train-fad-autoencoder",
                "--dataset",
                "fashion",
                "--out",
                str(out),
                "--epochs",
                "2",
                "--train-subset",
                "512",
                "--test-subset",
                "2000",
                "--batch-size",
                "64",
                "--data-root",
                data_root,
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, data_root):
    """The checkpoint of a one-epoch ESVAE run (T = 2) on 256 Fashion-MNIST training images."""
    from esvae.config import paper_train_config
    from esvae.train import train

    cfg = paper_train_config("fashion")
    cfg.epochs, cfg.batch_size, cfg.train_subset, cfg.test_subset = 1, 32, 256, 64
    out = tmp_path_factory.mktemp("run")
    train(
        model_name="esvae",
        dataset="fashion",
        out_dir=out,
        train_config=cfg,
        model_overrides={"timesteps": 2},
        data_root=data_root,
        device="cpu",
    )
    return out / "checkpoint.pt"


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory, data_root, inception_cache):
    """A folder where the README's smoke command ran locally (test_pipeline_smoke checks it, the SLURM
    test compares its own run with it); ``$ESVAE_SMOKE_DIR`` when it holds a finished run."""
    reuse = os.environ.get("ESVAE_SMOKE_DIR")
    if reuse and (Path(reuse) / "results" / "smoke" / "tables" / "table1.csv").is_file():
        return Path(reuse)
    assert SMOKE_COMMAND in (REPO / "README.md").read_text()  # the README's example is the command run here
    work = tmp_path_factory.mktemp("smoke")
    cmd = [str(BIN / "snakemake"), *SMOKE_COMMAND.split()[1:], "-s", str(REPO / "Snakefile"), "--directory", str(work)]
    env = workflow_env(data_root, inception_cache)
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    (work / "smoke-run.txt").write_text(out.stdout + out.stderr + f"\nseconds {time.perf_counter() - start:.0f}\n")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return work
