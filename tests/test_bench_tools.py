"""The benchmark's measuring tools: FLOPs from layer shapes, peak resident memory in a fresh
process, the device check against the CPU reference, and benchmarks/gpu_check.sh (run on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import esvae
from esvae_bench import flops_per_image
from esvae_bench.devices import compare_with_cpu
from esvae_bench.rss import peak_rss

REPO = Path(__file__).resolve().parent.parent


def test_flops_of_a_matrix_product_by_hand():
    a, b = torch.ones(4, 3), torch.ones(3, 5)
    assert flops_per_image(lambda: a @ b, batch=2) == 2 * 4 * 3 * 5 / 2


@pytest.mark.parametrize("T", [1, 3])
def test_esvae_evaluation_flops_equal_the_layer_shapes(T):
    """Multiply-accumulates per image of the evaluation forward, from the architecture (docs/method.md
    section 2): the first convolution runs once (its input is the same at every step), the last
    layer once after the readout, every other layer T times; the prior's bottleneck once."""
    model = esvae.build_model("esvae", "fashion", timesteps=T).eval()
    L = model.config.latent_dim
    conv = lambda pixels, c_in, c_out: pixels * c_in * c_out * 9  # noqa: E731  (per image, 3x3 kernels)
    once = conv(16 * 16, 1, 32) + conv(32 * 32, 32, 1) + L * L
    per_step = (
        conv(8 * 8, 32, 64)
        + conv(4 * 4, 64, 128)
        + conv(2 * 2, 128, 256)  # encoder 1-3
        + 1024 * L
        + L * 1024  # latent, decoder input
        + conv(2 * 2, 256, 128)
        + conv(4 * 4, 128, 64)
        + conv(8 * 8, 64, 32)  # transposed: input pixels
        + conv(16 * 16, 32, 32)
    )  # final_layer.0
    x = torch.rand(2, 1, 32, 32)

    def call():
        with torch.no_grad():
            model(x, torch.Generator().manual_seed(0))

    assert flops_per_image(call, batch=2) == 2 * (once + T * per_step)


def test_peak_rss_sees_the_memory_a_call_holds():
    """A fresh process's VmHWM rises over its resident set before the calls by at least the tensors
    the naive training step holds at once (which must all be resident while written)."""
    from esvae_bench import build_pair, peak_memory_bytes

    pair = build_pair("esvae", "fashion", 4, 16)
    tensors = peak_memory_bytes(pair.call("naive", "train"))
    out = peak_rss("esvae", "fashion", 4, 16, "naive", "train", "default", calls=1)
    assert out["vmhwm_bytes"] - out["rss_before_bytes"] >= 0.9 * tensors > 20 * 2**20


def test_peak_rss_failure_is_one_line():
    from esvae.errors import EsvaeError
    from esvae_bench.rss import MeasurementError

    with pytest.raises(MeasurementError, match="peak-memory process for nosuchmodel") as info:
        peak_rss("nosuchmodel", "fashion", 2, 2, "ours", "train", "default", calls=1)
    assert isinstance(info.value, EsvaeError) and "\n" not in str(info.value)


def test_timing_process_runs_the_benchs_pair_and_fails_in_one_line(monkeypatch):
    """A timing process (esvae_bench.worker) builds the same pair as the bench's own process: its
    first training step has the loss the bench expects of it and the same step here, and its
    training changes its weights (the second loss differs); what a library prints to stdout
    (numba's cache log here) is not read as a reply; a wrong mode or model ends it with the reason."""
    import copy

    from esvae.errors import EsvaeError
    from esvae_bench import build_pair, first_training_loss
    from esvae_bench.worker import MeasurementError, Worker

    pair = build_pair("esvae", "fashion", 2, 4)
    here = copy.deepcopy(pair).call("naive", "train")
    expected = [float(here()[1]["loss"].detach()) for _ in range(2)]
    assert first_training_loss(pair, "naive") == pytest.approx(expected[0], rel=1e-6)
    monkeypatch.setenv("NUMBA_DEBUG_CACHE", "1")  # numba then prints every cache lookup to stdout
    with Worker("esvae", "fashion", 2, 4, "ours", "tuned", 1) as worker:
        assert worker.call("train")["loss"] == pytest.approx(first_training_loss(pair, "ours"), rel=1e-6)
    with Worker("esvae", "fashion", 2, 4, "naive", "tuned", 1) as worker:
        got = [worker.call("train")["loss"] for _ in range(2)]
        assert got == pytest.approx(expected, rel=1e-6) and got[0] != got[1]
        assert worker.call("eval")["seconds"] > 0
        with pytest.raises(MeasurementError, match="unknown mode 'backward'") as info:
            worker.call("backward")
    assert isinstance(info.value, EsvaeError)
    with pytest.raises(MeasurementError, match="timing process for nosuchmodel T=2 ours.*exit status 1.*nosuchmodel"):
        with Worker("nosuchmodel", "fashion", 2, 4, "ours", "default", 1) as worker:
            worker.call("train")


@pytest.mark.workflow  # end to end (a whole command, real data or subprocesses): the long lane
@pytest.mark.parametrize("model_name", ["esvae", "fsvae"])
def test_device_check_passes_for_the_torch_op_path_and_catches_a_wrong_one(model_name, monkeypatch):
    """On CPU the device side runs the torch-op path a GPU runs: float64 equal to the compiled
    kernels; a leakier neuron in that path is caught."""
    report = compare_with_cpu(model_name, "fashion", 3, 4, "cpu", torch.float64)
    assert report["ok"] and report["train"]["spikes_compared"] > 0 and report["eval"]["output_std"] > 0.01
    import esvae.spiking.layers as layers

    original = layers.lif_forward_sweep
    monkeypatch.setattr(layers, "lif_forward_sweep", lambda current, tau, *a, **k: original(current, 0.3, *a, **k))
    broken = compare_with_cpu(model_name, "fashion", 3, 4, "cpu", torch.float64)
    assert not broken["ok"] and broken["train"]["spike_mismatches"] > 0


@pytest.mark.workflow  # end to end (a whole command, real data or subprocesses): the long lane
def test_gpu_check_script_runs_on_cpu(tmp_path, data_root):
    """benchmarks/gpu_check.sh end to end with --device cpu --smoke (what a lent GPU runs at full size)."""
    env = dict(os.environ, PYTHON=sys.executable, ESVAE_DATA=data_root)
    out = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    numerics = json.loads((tmp_path / "numerics.json").read_text())
    assert numerics["ok"] and {r["dtype"] for r in numerics["rows"]} == {"float64", "float32"}
    benches = sorted(tmp_path.glob("bench_batch*.json"))
    assert [p.name for p in benches] == ["bench_batch4.json", "bench_batch8.json"]
    for path in benches:
        rep = json.loads(path.read_text())
        assert rep["numerics_ok"] and [r["model"] for r in rep["rows"]] == ["esvae", "fsvae"]
    summary = (tmp_path / "summary.md").read_text()
    assert "SMOKE RUN" in summary and "float64: same" in summary and "| fsvae | 2 | 8 | train |" in summary
    assert "training images/s" in summary and "nan" not in summary
    for args, message in (
        (["--frobnicate"], "unknown argument"),
        (["--device"], "--device needs a value"),
        (["--out"], "--out needs a folder"),
    ):
        bad = subprocess.run(
            ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and message in bad.stderr, args
    dev = subprocess.run(
        [sys.executable, "-m", "esvae_bench.devices", "--device", "tpu:9"], capture_output=True, text=True, timeout=120
    )
    assert dev.returncode == 2 and dev.stderr.strip().count("\n") == 0 and "device 'tpu:9'" in dev.stderr
