"""Command line errors and outputs; a short real training run that must learn."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import esvae
from esvae.cli import main
from esvae.config import TrainConfig, paper_train_config
from esvae.device import resolve_device
from esvae.train import train

REPO = Path(__file__).resolve().parent.parent


def _run_main(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (
            ["describe", "--model", "vae", "--dataset", "fashion"],
            "invalid choice: 'vae' (choose from 'ann_vae', 'esvae', 'fsvae', 'taid')",
        ),
        (
            ["describe", "--model", "esvae", "--dataset", "svhn"],
            "invalid choice: 'svhn' (choose from 'mnist', 'mnist5k'",
        ),
        (
            ["describe", "--model", "esvae", "--dataset", "fashion", "--timesteps", "0"],
            "expected a positive integer, got 0",
        ),
        (
            ["describe", "--model", "esvae", "--dataset", "fashion", "--timesteps", "-3"],
            "expected a positive integer, got -3",
        ),
        (
            ["train", "--model", "esvae", "--dataset", "fashion", "--epochs", "1", "--out", "x", "--device", "tpu"],
            "unknown device 'tpu'; expected auto, cpu, cuda or cuda:N",
        ),
        (
            [
                "train",
                "--model",
                "esvae",
                "--dataset",
                "fashion",
                "--epochs",
                "1",
                "--out",
                "x",
                "--sampler",
                "fsvae_autoregressive",
            ],
            "model 'esvae' does not take the latent sampler 'fsvae_autoregressive'; "
            "it accepts: poisson, bernoulli_st, rate_repeat",
        ),
        (
            ["describe", "--model", "esvae", "--dataset", "fashion", "--votes", "3"],
            "--votes does not apply to model 'esvae'; it applies to: fsvae, taid",
        ),
        (
            ["describe", "--model", "fsvae", "--dataset", "fashion", "--mmd-kernel", "linear"],
            "--mmd-kernel does not apply to model 'fsvae'; it applies to: esvae",
        ),
        (
            ["describe", "--model", "fsvae", "--dataset", "fashion", "--fsvae-loss", "elbo"],
            "argument --fsvae-loss: invalid choice: 'elbo' (choose from 'mmd', 'kld')",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, fragment, capsys):
    code, out, err = _run_main(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esvae: error:") and fragment in lines[0], err


def test_missing_dataset_is_one_line_exit_2(tmp_path, capsys):
    code, _, err = _run_main(
        [
            "train",
            "--model",
            "esvae",
            "--dataset",
            "cifar10",
            "--epochs",
            "1",
            "--data-root",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("esvae: error: CIFAR-10 not found") and "cifar-10-batches-py" in lines[0]
    assert not (tmp_path / "run").exists()  # nothing half-made is left behind


def test_missing_dataset_in_a_subprocess(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "esvae",
            "train",
            "--model",
            "esvae",
            "--dataset",
            "mnist",
            "--epochs",
            "1",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esvae: error: MNIST not found"), proc.stderr
    assert "train-images-idx3-ubyte" in lines[0] and "--download" in lines[0] and "mnist5k" in lines[0]


def test_non_finite_loss_stops_with_step_and_terms(tmp_path, capsys, monkeypatch):
    import esvae.train as train_module

    def build_diverged(*args, **kwargs):
        model = esvae.build_model(*args, **kwargs)
        with torch.no_grad():
            model.prior_bottleneck.weight.fill_(float("nan"))
        return model

    monkeypatch.setattr(train_module, "build_model", build_diverged)
    code, _, err = _run_main(
        [
            "train",
            "--model",
            "esvae",
            "--dataset",
            "mnist5k",
            "--epochs",
            "1",
            "--timesteps",
            "2",
            "--train-subset",
            "8",
            "--test-subset",
            "8",
            "--batch-size",
            "4",
            "--no-eval-at-init",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("esvae: error: non-finite loss at epoch 1, step 1: loss=nan") and "mmd=nan" in last
    assert "no checkpoint was saved yet" in last


def test_subprocess_error_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "esvae", "describe", "--model", "esvae", "--dataset", "fashion", "--timesteps", "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "esvae: error: argument --timesteps: expected a positive integer, got 0 (see 'python -m esvae describe --help')"
    )


def test_describe_prints_resolved_config_and_parameter_count(capsys):
    code, out, _ = _run_main(["describe", "--model", "esvae", "--dataset", "cifar10"], capsys)
    report = json.loads(out)
    assert code == 0 and report["parameters"] == 1_069_411
    assert report["model_config"]["latent_dim"] == 128 and report["model_config"]["timesteps"] == 16
    assert sum(report["parameters_by_module"].values()) == 1_069_411
    assert report["paper_train_config"]["lr"] == pytest.approx(0.0006144)


def test_every_command_takes_threads_and_the_workflow_passes_each_rules(capsys):
    from esvae.cli import COMMANDS, _build_parser, build_parser
    from esvae_pipeline.cli import COMMANDS as PIPELINE_COMMANDS

    library = next(a for a in _build_parser()._actions if a.dest == "command").choices
    pipeline_parser = build_parser("python -m esvae_pipeline", "", PIPELINE_COMMANDS)
    pipeline = next(a for a in pipeline_parser._actions if a.dest == "command").choices
    assert set(library) == {"train", "describe", "evaluate", "probe", "train-fad-autoencoder", "prepare-data"}
    assert set(pipeline) == {"track", "report", "browse"} and len(COMMANDS) == len(library)
    from esvae_bench.cli import build_parser as bench_parser

    commands = {**library, **pipeline, "bench": bench_parser()}
    lacking = [name for name, p in commands.items() if "--threads" not in p._option_string_actions]
    assert lacking == []
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        code, _, _ = _run_main(["describe", "--model", "esvae", "--dataset", "fashion", "--threads", "1"], capsys)
        assert code == 0 and torch.get_num_threads() == 1  # applied before the command runs
    finally:
        torch.set_num_threads(before)
    # Every rule that declares threads hands them to the command it runs.
    rules = Path(__file__).resolve().parents[1] / "workflow" / "rules"
    for smk in sorted(rules.glob("*.smk")):
        for block in smk.read_text().split("\nrule ")[1:]:
            if "    threads:" in block and "python -m esvae" in block:  # esvae and esvae_pipeline
                assert "--threads {threads}" in block, f"{smk.name}: rule {block.split(':')[0]} drops its threads"


@pytest.mark.parametrize("model_name", ["fsvae", "taid"])
def test_describe_fsvae_family_with_its_flags(model_name, capsys):
    code, out, _ = _run_main(
        ["describe", "--model", model_name, "--dataset", "fashion", "--votes", "4", "--fsvae-loss", "kld"], capsys
    )
    report = json.loads(out)
    assert code == 0 and report["model_config"]["votes"] == 4 and report["model_config"]["loss"] == "kld"
    # k only sizes the MLPs' last layers (4L -> kL, L = 128): 16 fewer votes remove 2 x 16 x 128 x (512 + 1 + 2)
    full = 4_053_601 + (256 if model_name == "taid" else 0)
    assert report["parameters"] == full - 2 * 16 * 128 * (512 + 1 + 2)
    train_cfg = report["paper_train_config"]
    assert (train_cfg["lr"], train_cfg["batch_size"], train_cfg["epochs"], train_cfg["weight_decay"]) == (
        0.001,
        250,
        150,
        0.001,
    )


def test_paper_train_configs_use_effective_learning_rates():
    assert paper_train_config("fashion").lr == pytest.approx(0.003 * 256 / 250)
    assert paper_train_config("cifar10").lr == pytest.approx(0.0006 * 256 / 250)
    assert paper_train_config("celeba").lr == pytest.approx(0.001 * 64 / 250)
    assert paper_train_config("celeba").batch_size == 64 and paper_train_config("cifar10").hflip
    assert not paper_train_config("mnist").hflip


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(esvae.ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine; the CUDA step test ran nowhere"
)
def test_training_step_on_cuda():
    """The CUDA network computes what the CPU reference does (float64: same spikes, gradients and
    outputs within the bench's tolerances), and a training step and sampling stay on the device."""
    from esvae_bench.devices import compare_with_cpu

    report = compare_with_cpu("esvae", "fashion", 4, 8, "cuda", torch.float64)
    assert report["ok"] and report["train"]["spikes_compared"] > 0, report
    model = esvae.build_model("esvae", "fashion", timesteps=4).cuda()
    x = torch.rand(8, 1, 32, 32, device="cuda") * 2 - 1
    gen = torch.Generator(device="cuda").manual_seed(0)
    terms = model.loss(x, model(x, generator=gen))
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and model.encoder[0].weight.grad.is_cuda
    assert model.sample(2, generator=gen).device.type == "cuda"


@pytest.mark.workflow  # end to end (a whole command, real data or subprocesses): the long lane
def test_short_real_training_run_learns_and_writes_outputs(tmp_path):
    """Fashion-MNIST (real, from the Debian package), 512 images, T=4: test MSE must fall clearly."""
    cfg = TrainConfig(
        **{
            **paper_train_config("fashion").__dict__,
            "epochs": 2,
            "batch_size": 32,
            "train_subset": 512,
            "test_subset": 256,
        }
    )
    out = tmp_path / "run"
    result = train(
        model_name="esvae",
        dataset="fashion",
        out_dir=out,
        train_config=cfg,
        model_overrides={"timesteps": 4},
        data_root=os.environ.get("ESVAE_DATA", tmp_path / "data"),
        device="cpu",
    )
    rows = list(csv.DictReader(open(out / "history.tsv"), delimiter="\t"))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    initial, final = float(rows[0]["test_mse"]), float(rows[-1]["test_mse"])
    assert final < 0.7 * initial, (initial, final)
    # The reconstructions depend on their inputs: paired with the wrong input they are far worse
    # (a decoder that ignored the latent would score about the same either way).
    from esvae.data import load_split, to_model_range

    x = to_model_range(load_split("fashion", "test", os.environ.get("ESVAE_DATA", tmp_path / "data")).images[:256])
    trained, _ = esvae.load_checkpoint(out / "checkpoint.pt")
    with torch.no_grad():
        recon = trained.eval()(x, generator=torch.Generator().manual_seed(0)).reconstruction
    matched = (recon - x).pow(2).mean().item()
    mismatched = (recon.roll(1, dims=0) - x).pow(2).mean().item()
    assert matched < 0.6 * mismatched, (matched, mismatched)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reconstruction_mse"]["n"] == 256 and metrics["reconstruction_mse"]["split"] == "test[:256]"
    assert metrics["reconstruction_mse"]["value"] == pytest.approx(final, rel=1e-5)
    assert metrics["data_label"] == "Fashion-MNIST" and metrics["train_images"] == 512
    assert metrics["baseline_mean_image_mse"]["n"] == 256 and 0.2 < metrics["baseline_mean_image_mse"]["value"] < 0.5
    config = json.loads((out / "config.json").read_text())
    assert config["learning_rates"] == {"network": pytest.approx(0.003072), "prior_bottleneck": pytest.approx(0.03072)}
    model, ckpt = esvae.load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 32 and ckpt["optimizer"] is not None
    from PIL import Image

    with Image.open(out / "reconstructions.png") as img:
        assert img.size == (8 * 34 + 2, 8 * 34 + 2)  # 8 x 8 tiles of 32 px with 2 px padding
    with Image.open(out / "samples.png") as img:
        assert img.size == (8 * 34 + 2, 8 * 34 + 2)
    assert "effective LR 0.003072" in (out / "train.log").read_text()
    assert result.metrics == metrics


@pytest.mark.parametrize(
    "model_name,overrides,run",
    [
        ("esvae", {"timesteps": 4, "sampler": "bernoulli_st"}, (2, 32, 512)),
        ("esvae", {"timesteps": 4, "sampler": "rate_repeat"}, (2, 32, 512)),
        # FSVAE and TAID start saturated (test MSE about 1.6) and need about 100 steps at lr 0.001.
        ("fsvae", {"timesteps": 4}, (3, 32, 1024)),
        ("taid", {"timesteps": 4}, (3, 32, 1024)),
        # The ANN VAE's KLD weight is 1/(batches per epoch): on 16 batches it first collapses to the
        # mean image, so it gets 96 steps of a larger subset (about 15 s).
        ("ann_vae", {}, (3, 64, 2048)),
    ],
)
@pytest.mark.workflow  # end to end (a whole command, real data or subprocesses): the long lane
def test_each_model_and_sampler_learns_on_real_data(tmp_path, model_name, overrides, run):
    """A short real run for the ablation samplers and the baselines, with each model's paper optimiser."""
    data_root = os.environ.get("ESVAE_DATA", tmp_path / "data")
    cfg = esvae.MODELS[model_name].paper_train("fashion")
    (cfg.epochs, cfg.batch_size, cfg.train_subset), cfg.test_subset = run, 256
    train(
        model_name=model_name,
        dataset="fashion",
        out_dir=tmp_path / "run",
        train_config=cfg,
        model_overrides=overrides,
        data_root=data_root,
        device="cpu",
    )
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.tsv"), delimiter="\t"))
    initial, final = float(rows[0]["test_mse"]), float(rows[-1]["test_mse"])
    assert final < 0.7 * initial, (initial, final)
    from esvae.data import load_split, to_model_range

    x = to_model_range(load_split("fashion", "test", data_root).images[:256])
    trained, ckpt = esvae.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["model_name"] == model_name
    accepted = esvae.MODELS[model_name].samplers
    assert ckpt["model_config"].get("sampler") == overrides.get("sampler", accepted[0] if accepted else None)
    with torch.no_grad():
        recon = trained.eval()(x, generator=torch.Generator().manual_seed(0)).reconstruction
    matched = (recon - x).pow(2).mean().item()
    mismatched = (recon.roll(1, dims=0) - x).pow(2).mean().item()
    assert matched < 0.6 * mismatched, (matched, mismatched)
    print(
        f"{model_name} {overrides}: test MSE {initial:.4f} -> {final:.4f} (N=256, Fashion-MNIST test[:256], "
        f"{cfg.train_subset} train images, {cfg.epochs} epochs, batch {cfg.batch_size})"
    )
