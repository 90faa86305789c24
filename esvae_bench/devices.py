"""The network on another device against the CPU reference: ``python -m esvae_bench.devices``.

The CPU path (compiled LIF kernels) is the reference the tests and the float64 benchmark check tie
to the step-by-step original. On a GPU the same model runs the torch-op path of the fused tdBN + LIF
op (:class:`esvae.spiking.layers._TDBNThenLIF`) with cuDNN convolutions. This check builds one
model (paper configuration, random initialisation, seed 0), copies it to the device, and feeds both
copies the same inputs with no random draw on either side (random generators differ between
devices):

* the backbone: ``encode(images)`` -> latent spikes; ``decode(s)`` on the CPU copy's latent spikes
  (as the deterministic stand-in for a sampled latent), loss ``mse(decode, images) + c . rate``
  with a fixed vector ``c`` so that the encoder receives a gradient through its spikes;
* FSVAE's posterior and prior vote MLPs on the CPU's latent spikes (and those shifted by a step);

in training mode (batch statistics; the running statistics they update are compared too) and then in
evaluation mode. In float64 the verdict: identical spikes, outputs within 1e-9, gradients within
1e-6 of the largest. float32 differences are reported as information (a different summation order
can flip a spike whose potential lies within rounding of the threshold).

With ``--device cpu`` the second copy runs the torch-op path on the CPU (the compiled kernels
switched off), which is what a GPU runs: the check of that path that CI can run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import torch
import torch.nn.functional as F

OUTPUT_ATOL_FLOAT64 = 1e-9
GRAD_RTOL_FLOAT64 = 1e-6


@contextlib.contextmanager
def _torch_ops_path(on: bool) -> Iterator[None]:
    """Switch the compiled CPU kernels off (``ESVAE_NO_NUMBA=1``) inside the block when ``on``."""
    saved = os.environ.get("ESVAE_NO_NUMBA")
    if on:
        os.environ["ESVAE_NO_NUMBA"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("ESVAE_NO_NUMBA", None)
        else:
            os.environ["ESVAE_NO_NUMBA"] = saved


def _pass(model, images: torch.Tensor, latent_in, weights: torch.Tensor, training: bool) -> Dict[str, Any]:
    """One forward (and in training one backward) of the deterministic pieces; tensors back on the CPU."""
    model.train(training)
    model.zero_grad(set_to_none=True)
    out: Dict[str, Any] = {}
    with torch.set_grad_enabled(training):
        latent = model.encode(images)  # (T, N, L)
        decode_from = latent.detach() if latent_in is None else latent_in.to(images.device)
        recon = model.decode(decode_from)
        loss = F.mse_loss(recon, images) + (latent.mean(0) * weights).sum()
        out["latent_spikes"], out["reconstruction"] = latent, recon
        if hasattr(model, "posterior"):  # FSVAE / TAID vote MLPs
            z = decode_from
            shifted = torch.cat([torch.zeros_like(z[:1]), z[:-1]])
            q = model.posterior.layers(torch.cat([latent, shifted], dim=-1))
            p = model.prior.layers(shifted)
            out["posterior_votes"], out["prior_votes"] = q, p
            loss = loss + (q.mean() - p.mean()) ** 2
        if training:
            loss.backward()
    result = {k: v.detach().cpu() for k, v in out.items()}
    result["grads"] = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    result["running"] = {k: v.detach().cpu() for k, v in model.state_dict().items() if "running_" in k}
    return result


def _differences(ref: Dict[str, Any], other: Dict[str, Any]) -> Dict[str, Any]:
    spikes = [k for k in ("latent_spikes", "posterior_votes", "prior_votes") if k in ref]
    mismatched = sum(int((ref[k] != other[k]).sum()) for k in spikes)
    compared = sum(ref[k].numel() for k in spikes)
    output = float((ref["reconstruction"] - other["reconstruction"]).abs().max())
    grads_ref, grads_other = ref["grads"], other["grads"]
    if grads_ref.keys() != grads_other.keys():
        raise AssertionError(
            f"gradients exist for different parameters: {sorted(grads_ref.keys() ^ grads_other.keys())}"
        )
    worst = 0.0
    if grads_ref:
        scale = max(float(g.abs().max()) for g in grads_ref.values())
        worst = max(
            float((grads_ref[n] - grads_other[n]).abs().max()) / (float(grads_ref[n].abs().max()) + 1e-3 * scale)
            for n in grads_ref
        )
    running = max((float((ref["running"][k] - other["running"][k]).abs().max()) for k in ref["running"]), default=0.0)
    return {
        "spike_mismatches": mismatched,
        "spikes_compared": compared,
        "output_max_abs_diff": output,
        "grad_max_rel_err": worst,
        "running_stats_max_abs_diff": running,
    }


def compare_with_cpu(
    model_name: str, setting: str, timesteps: int, batch: int, device: str, dtype: torch.dtype
) -> Dict[str, Any]:
    """Training-mode and evaluation-mode differences between the CPU reference and ``device``."""
    from esvae.models import build_model

    torch.manual_seed(0)
    cpu = build_model(model_name, setting, timesteps=timesteps).to(dtype)
    other = copy.deepcopy(cpu).to(device)
    c, s = cpu.config.in_channels, cpu.config.image_size
    images = torch.rand(batch, c, s, s, generator=torch.Generator().manual_seed(1), dtype=dtype) * 2 - 1
    weights = torch.randn(cpu.config.latent_dim, generator=torch.Generator().manual_seed(2), dtype=dtype)
    torch_ops = torch.device(device).type == "cpu"
    report: Dict[str, Any] = {}
    # Momentum 1 in training: the running statistics become the batch's, so that evaluation mode
    # then runs a network whose units fire (see esvae_bench._running_stats_set_to_batch).
    from . import _running_stats_set_to_batch

    with _running_stats_set_to_batch(cpu, other):
        ref = _pass(cpu, images, None, weights, True)
        with _torch_ops_path(torch_ops):
            dev = _pass(other, images.to(device), ref["latent_spikes"], weights.to(device), True)
    report["train"] = _differences(ref, dev)
    ref = _pass(cpu, images, None, weights, False)
    with _torch_ops_path(torch_ops):
        dev = _pass(other, images.to(device), ref["latent_spikes"], weights.to(device), False)
    report["eval"] = _differences(ref, dev)
    report["eval"]["output_std"] = float(ref["reconstruction"].std())
    if dtype == torch.float64:
        report["ok"] = (
            all(
                r["spike_mismatches"] == 0
                and r["grad_max_rel_err"] <= GRAD_RTOL_FLOAT64
                and max(r["output_max_abs_diff"], r["running_stats_max_abs_diff"]) <= OUTPUT_ATOL_FLOAT64
                for r in (report["train"], report["eval"])
            )
            and report["eval"]["output_std"] > 0
        )
    return report


def run(models: List[str], setting: str, timesteps: int, batch: int, device: str) -> Dict[str, Any]:
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (torch-op path, compiled kernels off)"
    rows = []
    for model_name in models:
        for dtype in (torch.float64, torch.float32):
            row = {
                "model": model_name,
                "dtype": str(dtype).replace("torch.", ""),
                **compare_with_cpu(model_name, setting, timesteps, batch, device, dtype),
            }
            rows.append(row)
    return {
        "what": (
            "the network on DEVICE against the CPU reference (compiled kernels), same weights and inputs, "
            "training-mode forward/backward then evaluation mode; float64 is the verdict"
        ),
        "conditions": {
            "setting": setting,
            "timesteps": timesteps,
            "batch": batch,
            "weights": "paper configuration, random initialisation (seed 0)",
            "float64_tolerances": {"outputs": OUTPUT_ATOL_FLOAT64, "gradients": GRAD_RTOL_FLOAT64},
        },
        "device": name,
        "ok": all(r["ok"] for r in rows if r["dtype"] == "float64"),
        "rows": rows,
    }


def format_rows(report: Dict[str, Any]) -> str:
    lines = [
        "| model | dtype | train: spikes differ | outputs | grads (rel) | eval: spikes differ | outputs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        t, e = r["train"], r["eval"]
        lines.append(
            f"| {r['model']} | {r['dtype']} | {t['spike_mismatches']} of {t['spikes_compared']} | "
            f"{t['output_max_abs_diff']:.1e} | {t['grad_max_rel_err']:.1e} | "
            f"{e['spike_mismatches']} of {e['spikes_compared']} | {e['output_max_abs_diff']:.1e} |"
        )
    c = report["conditions"]
    lines.append("")
    lines.append(
        f"{report['device']} vs CPU reference; {c['setting']} setting, T={c['timesteps']}, "
        f"batch {c['batch']}, {c['weights']}; float64 verdict: {'same' if report['ok'] else 'MISMATCH'}."
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esvae_bench.devices", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (the torch-op path on CPU)")
    parser.add_argument("--models", nargs="+", choices=("esvae", "fsvae"), default=["esvae", "fsvae"])
    parser.add_argument(
        "--setting", "--dataset", dest="setting", default="fashion", choices=("mnist", "fashion", "cifar10", "celeba")
    )
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--json", default=None, help="write the report here as JSON")
    args = parser.parse_args(argv)
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        print(f"esvae_bench.devices: error: unknown device {args.device!r} (cpu, cuda or cuda:N)", file=sys.stderr)
        return 2
    if dev.type not in ("cpu", "cuda"):
        print(f"esvae_bench.devices: error: device {args.device!r}: only cpu and cuda are supported", file=sys.stderr)
        return 2
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(
            f"esvae_bench.devices: error: device {args.device!r} requested but CUDA is not available", file=sys.stderr
        )
        return 2
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        print(
            f"esvae_bench.devices: error: device {args.device!r}: this machine has {torch.cuda.device_count()} "
            "CUDA device(s)",
            file=sys.stderr,
        )
        return 2
    if args.timesteps < 1 or args.batch < 2:
        print("esvae_bench.devices: error: --timesteps must be >= 1 and --batch >= 2", file=sys.stderr)
        return 2
    report = run(args.models, args.setting, args.timesteps, args.batch, args.device)
    if args.json:
        from esvae.files import write_json

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.json), report)
    print(format_rows(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
