"""A real SLURM cluster: docs/slurm.md's cluster block, run as written. It brings up a single-node
cluster on this machine (scripts/cluster/slurm_local.sh; root, Debian's slurm-wlm and munge,
installed by the script when missing), runs the smoke preset through profiles/slurm with the
Snakemake SLURM executor plugin, and brings the cluster down again by process id. Then: every job
but the `all` target went through the scheduler (submitted with a SLURM job id, listed by squeue
as COMPLETED under this run's name, its SLURM log written), and the outputs equal the local smoke
run's (the session fixture ``smoke_dir``) apart from timings.

Needs root (the script installs slurm-wlm and munge when missing and starts the daemons): without
it the test is skipped, saying so and how to run it, unless ``ESVAE_REQUIRE_SLURM=1`` (``.ci/run``
sets it, so CI can never skip it), where it fails instead.
Bounded: every command has a timeout; the cluster is stopped in a ``finally``. With
``ESVAE_SMOKE_DIR`` (see conftest.py) that run must come from the same code and Inception cache:
code versions and weight hashes are compared too.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import BIN, REPO, workflow_env

from esvae_pipeline import grid
from esvae_pipeline.report import TABLES

pytestmark = pytest.mark.slurm
REQUIRED = os.environ.get("ESVAE_REQUIRE_SLURM") == "1"
if os.geteuid() != 0 and not REQUIRED:
    pytest.skip(
        "the single-node SLURM cluster needs root (to install slurm-wlm and munge and start the daemons): "
        "run 'sudo ESVAE_REQUIRE_SLURM=1 .venv/bin/python -m pytest tests/test_slurm_cluster.py'",
        allow_module_level=True,
    )

SLURM_DOC = (REPO / "docs" / "slurm.md").read_text()
STATE = Path(os.environ.get("ESVAE_SLURM_DIR", "/tmp/esvae-slurm"))
DAEMONS = ("munged", "slurmctld", "slurmd")
POINTS = grid.all_points(grid.resolve_config({"preset": "smoke"}))
# What differs between two runs of the same jobs: wall-clock timings (JSON keys, table columns, MLflow metrics).
TIMING = {
    "seconds",
    "seconds_all",
    "sampling_time",
    "epoch_seconds",
    "train_images_per_s",
    "sampling_ms",
    "sampling_ms_std",
    "sampling_ms_per_image",
    "train_seconds",
    "train_seconds_std",
    "seconds_max",
    "max_rss_mb",
}


def cluster_block():
    """docs/slurm.md's cluster commands: bring-up, the snakemake command, bring-down."""
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", SLURM_DOC, flags=re.S) if "slurm_local.sh up" in b]
    up, run, down = block.strip().splitlines()
    assert up == "bash scripts/cluster/slurm_local.sh up" and down == "bash scripts/cluster/slurm_local.sh down"
    assert run.startswith(".venv/bin/snakemake --profile profiles/slurm ") and "preset=smoke" in run
    return up, run, down


def _daemon_pids():
    pids = {}
    for name in DAEMONS:
        try:
            pids[name] = int((STATE / f"{name}.pid").read_text())
        except (OSError, ValueError):
            pass
    return pids


def _alive(pids):
    """The daemons among ``pids`` still running (a reused pid runs another program)."""

    def comm(pid):
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None

    return {name: pid for name, pid in pids.items() if comm(pid) == name}


def _bash(line, timeout):
    return subprocess.run(["bash", "-c", line], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory, smoke_dir, data_root, inception_cache):
    up, run, down = cluster_block()
    running = _alive(_daemon_pids())
    if running:  # not this test's to stop
        pytest.fail(f"a cluster is already running in {STATE} ({running}); stop it with '{down}'")
    work = tmp_path_factory.mktemp("slurm-smoke")
    pids = {}
    try:
        start = time.perf_counter()
        out = _bash(up, timeout=900)  # apt-get install on a fresh machine, then at most 60 s
        up_seconds = time.perf_counter() - start
        pids = _daemon_pids()
        assert out.returncode == 0, f"the cluster did not come up:\n{out.stdout}{out.stderr}"
        assert sorted(pids) == sorted(DAEMONS), (pids, out.stderr)
        # docs/slurm.md's command in a fresh folder: the Snakefile and profile of this checkout, the
        # interpreter running the tests.
        args = [str(REPO / a) if a == "profiles/slurm" else a for a in run.split()[1:]]
        cmd = [str(BIN / "snakemake"), *args, "-s", str(REPO / "Snakefile"), "--directory", str(work)]
        env = workflow_env(data_root, inception_cache)
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            log, _ = proc.communicate(timeout=1500)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate(timeout=60)
            pytest.fail(f"the SLURM smoke run took over 1500 s:\n{log[-4000:]}")
        seconds = time.perf_counter() - start
        (work / "slurm-run.txt").write_text(f"{log}\ncluster up in {up_seconds:.1f} s\nseconds {seconds:.0f}\n")
        bring_up = re.search(r"up in ([\d.]+) s", out.stderr).group(1)  # the script's own clock, without apt
        record = smoke_dir / "smoke-run.txt"  # the local run's time, written by its fixture
        local = re.findall(r"^seconds (\d+)$", record.read_text(), flags=re.M) if record.is_file() else ["?"]
        print(
            f"\nSLURM: cluster up in {bring_up} s ({up_seconds:.1f} s for the command); smoke run {seconds:.0f} s "
            f"through SLURM, {local[-1]} s locally"
        )
        assert proc.returncode == 0, log[-4000:]
        # job states while the cluster is still up (finished jobs stay listed for MinJobAge = 1 h)
        queue = subprocess.run(
            ["squeue", "--states=all", "--noheader", "--format=%i|%T|%j"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "SLURM_CONF": str(STATE / "slurm.conf")},
        )
        assert queue.returncode == 0, queue.stderr
        yield work, log, queue.stdout
    finally:
        pids = pids or _daemon_pids()
        stopped = _bash(down, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        alive = _alive(pids)
        assert not alive, f"daemons still running after '{down}': {alive}"
        assert not Path("/etc/slurm/slurm.conf").is_symlink()


def test_every_job_went_through_the_scheduler(slurm_run):
    work, log, queue = slurm_run
    stats = re.search(r"Job stats:\njob +count\n[- ]+\n(.*?)\ntotal +(\d+)", log, flags=re.S)
    planned = {rule: int(n) for rule, n in (line.split() for line in stats.group(1).splitlines())}
    assert planned.pop("all") == 1 and sum(planned.values()) == int(stats.group(2)) - 1
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", log)
    per_rule = {}
    for _slurm_id, slurm_log in submitted:
        rule = re.search(r"/slurm_logs/rule_(\w+?)/", slurm_log).group(1)
        per_rule[rule] = per_rule.get(rule, 0) + 1
        text = Path(slurm_log).read_text()  # written by slurmd: the job ran on the node
        assert f"rule {rule}:" in text and "1 of 1 steps (100%) done" in text, (slurm_log, text[-2000:])
    assert per_rule == planned  # 22 jobs: prepare_data, write_config, fad_autoencoder, 6 x train/evaluate/probe, report
    assert re.findall(r"^localrule (\w+):", log, flags=re.M) == ["all"]
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    listed = {i: (state, name) for i, state, name in (line.split("|") for line in queue.split())}
    for slurm_id, _ in submitted:
        assert listed[slurm_id] == ("COMPLETED", run_id), (slurm_id, listed.get(slurm_id))
    assert len(listed) == len(submitted)  # and nothing else ran on the cluster


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def test_outputs_equal_the_local_run(slurm_run, smoke_dir):
    work = slurm_run[0]
    local, remote = smoke_dir / "results" / "smoke", work / "results" / "smoke"
    checkpoints = [f"runs/{p.key}/train/checkpoint.pt" for p in POINTS] + ["fad/fashion/fad_autoencoder.pt"]
    for name in checkpoints:
        a, b = (torch.load(d / name, map_location="cpu", weights_only=False) for d in (local, remote))
        a, b = a.get("state_dict", a), b.get("state_dict", b)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    def compared(folder):  # Snakemake's per-job times (benchmarks/) are timings only
        return sorted(
            f.relative_to(folder)
            for f in folder.rglob("*")
            if f.is_file()
            and not f.name.startswith("mlflow")
            and "mlflow-artifacts" not in f.parts
            and f.relative_to(folder).parts[0] != "benchmarks"
        )

    files = compared(local)
    assert files == compared(remote)
    timed_tables = {
        f.stem
        for f in files
        if f.parent.name == "tables" and f.suffix == ".csv" and TIMING & set(pd.read_csv(local / f).columns)
    }
    for name in files:
        a, b = local / name, remote / name
        if name.suffix == ".json":
            assert _without_timing(json.loads(a.read_text())) == _without_timing(json.loads(b.read_text())), name
        elif name.suffix in (".csv", ".tsv"):
            fa, fb = (pd.read_csv(f, sep="\t" if name.suffix == ".tsv" else ",") for f in (a, b))
            if name.name == "claims.csv":  # C10 compares sampling times: a timing
                fa, fb = (f[f["id"] != "C10"].reset_index(drop=True) for f in (fa, fb))
            keep = [c for c in fa.columns if c not in TIMING]
            pd.testing.assert_frame_equal(fa[keep], fb[keep], obj=str(name))
        elif name.suffix == ".png" or name.suffix in (".md", ".tex") and name.stem not in timed_tables | {"claims"}:
            assert a.read_bytes() == b.read_bytes(), name  # images, and the tables without a timing column
    assert {f"{t}.csv" for t in TABLES} <= {f.name for f in files}


def test_mlflow_stores_hold_the_same_runs(slurm_run, smoke_dir):
    from mlflow.tracking import MlflowClient

    def runs(folder):
        client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'results' / 'smoke' / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("esvae-benchmark-smoke")
        return {
            r.data.tags["esvae.key"]: ({k: v for k, v in r.data.metrics.items() if k not in TIMING}, r.data.params)
            for r in client.search_runs([experiment.experiment_id])
        }

    local, remote = runs(smoke_dir), runs(slurm_run[0])
    assert sorted(remote) == sorted(p.key for p in POINTS) and remote == local
