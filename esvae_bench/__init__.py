"""``python -m esvae_bench``: this project's training step, evaluation forward and sampling against
a naive port of the original implementation approach (:mod:`esvae_bench.naive`), in one process.

For every model (ESVAE with the Poisson sampler, FSVAE) and T, both are built from the same weights
(the paper configuration, random initialisation with seed 0) and fed the same images and the same
random draws. The benchmark first checks that they agree -- latent spikes identical, outputs,
losses and gradients equal to float tolerance, generation equal -- then times:

* ``train``: one optimisation step, :func:`esvae.train.train_step` (the function ``esvae train``
  runs: forward, loss, backward, AdamW step) on a batch;
* ``eval``: the evaluation forward (eval mode, no gradient) on a batch;
* ``sample``: generating a batch of images (eval mode);

and measures each one's peak tensor memory (the PyTorch CPU allocator's allocations minus frees
during one call, from the profiler's memory events). Timing runs twice: with glibc's default
allocator settings, then with the heap kept (:func:`esvae.runtime.tune_allocator`, equal to
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=1G``), which is how ``esvae train``
runs; speed-ups are reported against the naive port under both settings.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from esvae.runtime import cpu_name

MODES = ("train", "eval", "sample")
RSS_MODES = ("train",)  # a fresh process per measurement: the training step, where memory matters
IMPLS = ("naive", "ours")
ALLOCATORS = ("default", "tuned")
ALLOCATOR_LABELS = {
    "default": "glibc defaults",
    "tuned": "heap kept (mallopt, = MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_ MALLOC_TOP_PAD_=1G), "
    "as `esvae train` runs",
    "cuda": "PyTorch's CUDA caching allocator",
}
# Agreement tolerances of the float64 check: outputs are tanh images in [-1, 1]; gradients relative
# to the tensor's largest entry (plus 1e-3 of the model's largest, for tensors whose exact gradient
# is 0, such as a convolution bias followed by batch norm).
OUTPUT_ATOL_FLOAT64 = 1e-9
CALL_SEED = 7  # the random draws of a timed call: a generator seeded so, fresh for each call
GRAD_RTOL_FLOAT64 = 1e-6


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gen(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device = torch.device("cpu")) -> int:
    """Peak bytes held by PyTorch allocations made during ``fn()`` above what was held before it.

    CPU: allocations minus frees in time order, over every thread, from the profiler's memory
    events. CUDA: the caching allocator's peak statistic."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    held = peak = 0
    for e in events:
        held += e.nbytes()
        peak = max(peak, held)
    return peak


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def time_in_turn(timed: Dict[str, Callable[[], float]], repeats: int) -> Dict[str, list]:
    """The seconds each ``timed[name]()`` returns (one call, timed): one warm-up call each, then
    ``repeats`` rounds that call every one once in turn, so that a slow spell of a shared machine
    hits all of them alike."""
    for fn in timed.values():
        fn()
    times: Dict[str, list] = {name: [] for name in timed}
    for _ in range(repeats):
        for name, fn in timed.items():
            times[name].append(fn())
    return times


def time_interleaved(
    fns: Dict[str, Callable[[], object]], repeats: int, device: torch.device = torch.device("cpu")
) -> Dict[str, list]:
    """:func:`time_in_turn` of functions run in this process (seconds per call of each)."""
    return time_in_turn({name: functools.partial(_seconds, fn, device) for name, fn in fns.items()}, repeats)


def first_training_loss(pair: "Pair", impl: str) -> float:
    """The loss of ``impl``'s first training step on ``pair`` (the forward that step runs, on a
    copy: ``pair`` is left as it was)."""
    import copy

    module: Any = copy.deepcopy(pair.module(impl)).train()
    with torch.no_grad():
        out = module(pair.images, generator=_gen(CALL_SEED, pair.device))
        return float(module.loss(pair.images, out)["loss"])


def time_pair_in_processes(
    pair: "Pair", setting: str, allocator: str, repeats: int, overrides: Optional[dict] = None
) -> Dict[str, Dict[str, list]]:
    """``{mode: {impl: seconds per call}}`` with each implementation in a process of its own under
    ``allocator`` (:mod:`esvae_bench.worker`), called in turn. Checks that each process built this
    process's pair: the loss of its first training step (the warm-up) must equal, to float32
    rounding, :func:`first_training_loss` of the same implementation here."""
    from .worker import MeasurementError, Worker

    expected = {impl: first_training_loss(pair, impl) for impl in IMPLS}
    size, threads = pair.images.shape[0], torch.get_num_threads()

    def timed(worker: Worker, mode: str, impl: str, calls: List[int]) -> float:
        reply = worker.call(mode)
        calls[0] += 1
        want = expected[impl]
        if mode == "train" and calls[0] == 1 and abs(reply["loss"] - want) > 1e-4 * max(1.0, abs(want)):
            raise MeasurementError(
                f"the {impl} timing process of {pair.model_name} T={pair.timesteps} ({allocator}) computed a "
                f"first training loss of {reply['loss']!r}, this process {want!r}: not the same pair"
            )
        return reply["seconds"]

    with contextlib.ExitStack() as stack:
        workers = {
            impl: stack.enter_context(
                Worker(pair.model_name, setting, pair.timesteps, size, impl, allocator, threads, overrides)
            )
            for impl in IMPLS
        }
        return {
            mode: time_in_turn(
                {impl: functools.partial(timed, workers[impl], mode, impl, [0]) for impl in IMPLS}, repeats
            )
            for mode in MODES
        }


@dataclass
class Pair:
    """Our model and its naive port, each with its own optimiser, and the batch to feed them."""

    model_name: str
    timesteps: int
    ours: torch.nn.Module
    naive: torch.nn.Module
    images: torch.Tensor
    optimizers: Dict[str, torch.optim.Optimizer] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def module(self, impl: str) -> torch.nn.Module:
        return self.ours if impl == "ours" else self.naive

    def call(self, impl: str, mode: str, seed: int = CALL_SEED) -> Callable[[], object]:
        """A zero-argument callable running ``mode`` once with ``impl`` (fresh generator each call)."""
        from esvae.train import train_step

        module, images = self.module(impl), self.images

        def run():
            gen = _gen(seed, self.device)
            if mode == "train":
                module.train()
                return train_step(module, self.optimizers[impl], images, gen)
            module.eval()
            with torch.no_grad():
                if mode == "eval":
                    return module(images, gen)
                return module.sample(images.shape[0], gen)

        return run


def build_pair(
    model_name: str,
    setting: str,
    timesteps: int,
    batch: int,
    lr: float = 1e-3,
    overrides: Optional[dict] = None,
    device: str = "cpu",
) -> Pair:
    from esvae.models import build_model

    from .naive import naive_param_groups, naive_port

    torch.manual_seed(0)
    ours = build_model(model_name, setting, timesteps=timesteps, **(overrides or {})).to(device)
    naive = naive_port(ours)
    c, s = ours.config.in_channels, ours.config.image_size
    images = (torch.rand(batch, c, s, s, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)
    pair = Pair(model_name, timesteps, ours, naive, images)
    pair.optimizers = {
        "ours": torch.optim.AdamW(ours.param_groups(lr, 10.0), lr=lr),
        "naive": torch.optim.AdamW(naive_param_groups(ours, naive, lr, 10.0), lr=lr),
    }
    return pair


def _get(out, key):
    return out[key] if isinstance(out, dict) else getattr(out, key)


class _running_stats_set_to_batch:
    """Batch-norm momentum 1 in both models for one training-mode pass: the running statistics
    become that batch's, so the evaluation-mode comparison runs a network whose units fire (with
    the initial statistics, 0 and 1, a randomly initialised decoder is silent and every image is
    the same)."""

    def __init__(self, *models):
        self.norms = [
            m for model in models for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]

    def __enter__(self):
        self.saved = [m.momentum for m in self.norms]
        for m in self.norms:
            m.momentum = 1.0

    def __exit__(self, *exc):
        for m, momentum in zip(self.norms, self.saved):
            m.momentum = momentum


def _compare(ours: Any, naive: Any, x: torch.Tensor) -> Dict[str, Any]:
    """Both models on ``x`` with the same draws: training-mode forward and backward, then
    evaluation forward and generation. Gradients are cleared afterwards; no optimiser step."""
    from .naive import parameter_pairs

    result: Dict[str, Any] = {}
    ours.train(), naive.train()
    for m in (ours, naive):
        m.zero_grad(set_to_none=True)
    with _running_stats_set_to_batch(ours, naive):
        out_o = ours(x, _gen(11, x.device))
        out_n = naive(x, _gen(11, x.device))
    terms_o, terms_n = ours.loss(x, out_o), naive.loss(x, out_n)
    terms_o["loss"].backward()
    terms_n["loss"].backward()
    mismatched = spikes = 0
    for key in ("latent_spikes", "sampled_spikes"):
        a, b = _get(out_o, key).detach(), _get(out_n, key).detach().movedim(-1, 0)
        mismatched += int((a != b).sum())
        spikes += a.numel()
    result["spike_mismatches"] = mismatched
    result["spikes_compared"] = spikes
    result["train_output_max_abs_diff"] = float((out_o.reconstruction - out_n["reconstruction"]).detach().abs().max())
    result["loss_abs_diff"] = max(abs(terms_o[k].item() - terms_n[k].item()) for k in terms_o)
    grads = parameter_pairs(ours, naive)
    scale = max(float(a.grad.abs().max()) for a, _ in grads.values() if a.grad is not None)
    worst = 0.0
    for name, (a, b) in grads.items():
        if (a.grad is None) != (b.grad is None):
            raise AssertionError(f"gradient of {name} exists in one implementation only")
        if a.grad is not None and b.grad is not None:
            err = float((a.grad - b.grad.reshape(a.shape)).abs().max()) / (float(a.grad.abs().max()) + 1e-3 * scale)
            worst = max(worst, err)
    result["grad_max_rel_err"] = worst
    theirs = naive.state_dict()
    result["running_stats_max_abs_diff"] = max(
        float((v - theirs[k].reshape(v.shape)).abs().max()) for k, v in ours.state_dict().items() if "running_" in k
    )
    for m in (ours, naive):
        m.zero_grad(set_to_none=True)
    # Evaluation uses the running statistics the training-mode pass just updated (in both).
    ours.eval(), naive.eval()
    with torch.no_grad():
        e_o = ours(x, _gen(12, x.device)).reconstruction
        e_n = naive(x, _gen(12, x.device))["reconstruction"]
        s_o = ours.sample(x.shape[0], _gen(13, x.device))
        s_n = naive.sample(x.shape[0], _gen(13, x.device))
    result["eval_output_max_abs_diff"] = float((e_o - e_n).abs().max())
    result["sample_max_abs_diff"] = float((s_o - s_n).abs().max())
    result["eval_output_std"] = float(e_o.std())  # not a constant image: the comparison means something
    return result


def check_numerics(pair: Pair, check_batch: Optional[int] = None) -> Dict[str, Any]:
    """Compare the two implementations (see :func:`_compare`) in float64 and in float32.

    The verdict is the float64 run (copies of both models and the images in double precision): there
    float rounding cannot move a membrane potential across the threshold, so the spikes must be
    identical and outputs and gradients equal to ~1e-9. The float32 run, the precision that is
    timed, is reported as well; there a different summation order can flip a spike whose potential
    lies within rounding of V_th, after which outputs differ, so it is information, not the check.
    """
    import copy

    from .naive import naive_port

    x = pair.images[:check_batch] if check_batch else pair.images
    ours64 = copy.deepcopy(pair.ours).double()  # a copy keeps every attribute (FSVAE's scheduled_p too)
    naive64 = naive_port(ours64)
    strict = _compare(ours64, naive64, x.double())
    strict["ok"] = (
        strict["spike_mismatches"] == 0
        and strict["grad_max_rel_err"] <= GRAD_RTOL_FLOAT64
        and max(
            strict["train_output_max_abs_diff"],
            strict["eval_output_max_abs_diff"],
            strict["sample_max_abs_diff"],
            strict["running_stats_max_abs_diff"],
            strict["loss_abs_diff"],
        )
        <= OUTPUT_ATOL_FLOAT64
        and strict["eval_output_std"] > 0
    )
    info = _compare(pair.ours, pair.naive, x)
    return {"ok": strict["ok"], "images": x.shape[0], "float64": strict, "float32": info}


def flops_per_image(fn: Callable[[], object], batch: int) -> float:
    """Floating-point operations of one call per image, counted from the shapes of the matrix
    products and convolutions it runs (forward and backward), by torch's FlopCounterMode; the
    neuron, batch-norm and other elementwise work is not counted (it is memory-bound, not FLOP-bound).
    The count is the dense one: the spike-driven convolutions (:mod:`esvae.spiking.spike_conv`),
    which skip the inputs that did not fire, are switched off while counting."""
    from torch.utils.flop_counter import FlopCounterMode

    from esvae.spiking import spike_conv

    saved, spike_conv.MAX_DENSITY = spike_conv.MAX_DENSITY, 0.0
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        spike_conv.MAX_DENSITY = saved
    return counter.get_total_flops() / batch


def spike_inputs(fn: Callable[[], object]) -> Dict[str, float]:
    """The convolutions on spike trains during one call: how many, how many ran spike-driven and
    the fraction of their input values that were spikes (the spike-driven kernels' speed depends on it)."""
    from esvae.spiking import spike_conv

    spike_conv.reset_stats()
    fn()
    stats = dict(spike_conv.STATS)
    return {
        "convolutions_on_spikes": stats["inputs"],
        "spike_driven": stats["spike_driven"],
        "firing_rate": stats["fired"] / max(stats["values"], 1),
    }


def dense_flops_per_second(device: torch.device = torch.device("cpu"), size: int = 4096, repeats: int = 3) -> float:
    """This machine's dense float32 throughput: the median of ``repeats`` ``size`` x ``size`` matrix
    products (after one warm-up), in FLOP/s: the ceiling a dense implementation of the network's
    products and convolutions could reach."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=g, device=device)
    b = torch.randn(size, size, generator=g, device=device)
    times = time_interleaved({"mm": lambda: a @ b}, repeats, device)["mm"]
    return 2 * size**3 / statistics.median(times)


def profile_call(fn: Callable[[], object], top: int = 12) -> Dict[str, Any]:
    """Where one call spends its time: the profiler's self CPU time per operator (top ``top``) and
    grouped into convolutions, batch norm, the fused tdBN + LIF op (its own code: the LIF
    kernels), matrix products and the rest."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(((e.key, e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()), key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    groups = {
        "convolution": 0.0,
        "batch norm": 0.0,
        "tdBN+LIF op (LIF kernels)": 0.0,
        "matrix products": 0.0,
        "other": 0.0,
    }
    for name, ms, _ in rows:
        if "convolution" in name.lower():  # aten's and ours (_SpikeConvolution, its backward)
            groups["convolution"] += ms
        elif "batch_norm" in name:
            groups["batch norm"] += ms
        elif "TDBNThenLIF" in name:
            groups["tdBN+LIF op (LIF kernels)"] += ms
        elif name in ("aten::mm", "aten::addmm", "aten::bmm"):
            groups["matrix products"] += ms
        else:
            groups["other"] += ms
    return {
        "total_ms": total,
        "groups_ms": groups,
        "top": [{"op": n, "self_ms": ms, "calls": c} for n, ms, c in rows[:top]],
        "note": "self CPU time under torch.profiler (its overhead inflates the total a little)",
    }


def run_bench(
    models: Sequence[str] = ("esvae", "fsvae"),
    timesteps: Sequence[int] = (4, 8, 16),
    batch: int = 64,
    setting: str = "fashion",
    repeats: int = 3,
    allocators: Sequence[str] = ALLOCATORS,
    memory: bool = True,
    overrides: Optional[dict] = None,
    check_batch: Optional[int] = 16,
    profile: bool = False,
    device: str = "cpu",
    rss: bool = True,
    progress: Callable[[str], None] = lambda msg: None,
) -> Dict[str, Any]:
    """Check and time every (model, T); returns the JSON-able report (see the module docstring).

    On a CUDA device there is one timing phase ("cuda", PyTorch's caching allocator: glibc's
    settings do not apply), peak memory is the caching allocator's peak and ``profile`` is skipped.
    """
    from esvae.runtime import tune_allocator

    dev = torch.device(device)
    if dev.type == "cuda":
        allocators, profile = ("cuda",), False
    elif list(allocators) not in (["default"], ["tuned"], ["default", "tuned"]):
        raise ValueError(f"allocators must be default, tuned or both in that order, got {list(allocators)}")
    if "tuned" in allocators and os.environ.get("ESVAE_NO_MALLOC_TUNING") == "1":
        from esvae.errors import ConfigError

        raise ConfigError("ESVAE_NO_MALLOC_TUNING=1 forbids the heap-kept timing; use --allocator default")
    pairs = [build_pair(m, setting, t, batch, overrides=overrides, device=device) for m in models for t in timesteps]
    rows: Dict[tuple, Dict[str, Any]] = {
        (p.model_name, p.timesteps): {
            "model": p.model_name,
            "timesteps": p.timesteps,
            "batch": batch,
            "seconds": {a: {} for a in allocators},
        }
        for p in pairs
    }
    for pair in pairs:
        progress(f"numerics check {pair.model_name} T={pair.timesteps}")
        rows[(pair.model_name, pair.timesteps)]["numerics"] = check_numerics(pair, check_batch)
    for allocator in allocators:
        if allocator == "tuned":  # in this process too: its peak-tensor calls and the profile run with the heap kept
            if not tune_allocator():
                from esvae.errors import ConfigError

                raise ConfigError(
                    "timing with the heap kept needs glibc's mallopt and ESVAE_NO_MALLOC_TUNING unset; "
                    "use --allocator default"
                )
        for pair in pairs:
            row = rows[(pair.model_name, pair.timesteps)]
            if dev.type == "cpu":
                progress(
                    f"timing {pair.model_name} T={pair.timesteps} train, eval, sample: naive and ours in turn, "
                    f"each in a process of its own (allocator {allocator})"
                )
                by_mode = time_pair_in_processes(pair, setting, allocator, repeats, overrides)
            else:
                progress(f"timing {pair.model_name} T={pair.timesteps} train, eval, sample: naive and ours in turn")
                by_mode = {
                    mode: time_interleaved({impl: pair.call(impl, mode) for impl in IMPLS}, repeats, pair.device)
                    for mode in MODES
                }
            for mode, times in by_mode.items():
                for impl in IMPLS:
                    row["seconds"][allocator].setdefault(impl, {})[mode] = statistics.median(times[impl])
                    row.setdefault("samples_seconds", {}).setdefault(allocator, {}).setdefault(impl, {})[mode] = times[
                        impl
                    ]
    if memory:
        for pair in pairs:
            row = rows[(pair.model_name, pair.timesteps)]
            row["peak_bytes"] = {}
            for impl in IMPLS:
                for mode in MODES:
                    progress(f"peak memory {pair.model_name} T={pair.timesteps} {mode} {impl}")
                    row["peak_bytes"].setdefault(impl, {})[mode] = peak_memory_bytes(pair.call(impl, mode), pair.device)
    if memory and rss and dev.type == "cpu":
        from .rss import MeasurementError, peak_rss

        for pair in pairs:
            if pair.timesteps != max(timesteps):
                continue
            row = rows[(pair.model_name, pair.timesteps)]
            for allocator in allocators:
                for impl in IMPLS:
                    for mode in RSS_MODES:
                        progress(
                            f"peak resident memory {pair.model_name} T={pair.timesteps} {mode} {impl} "
                            f"(allocator {allocator}, a fresh process)"
                        )
                        try:
                            measured = peak_rss(
                                pair.model_name,
                                setting,
                                pair.timesteps,
                                batch,
                                impl,
                                mode,
                                allocator,
                                overrides=overrides,
                            )
                        except MeasurementError as exc:  # the timings stay; the report says why
                            row["peak_rss_error"] = str(exc)
                            progress(f"peak resident memory not measured: {exc}")
                            continue
                        row.setdefault("peak_rss_bytes", {}).setdefault(allocator, {}).setdefault(impl, {})[mode] = (
                            measured
                        )
    dense = dense_flops_per_second(dev)
    for pair in pairs:
        row = rows[(pair.model_name, pair.timesteps)]
        row["flops_per_image"] = {mode: flops_per_image(pair.call("ours", mode), batch) for mode in MODES}
        row["flop_bound_images_per_s"] = {mode: dense / f for mode, f in row["flops_per_image"].items()}
        if dev.type == "cpu":
            row["spike_inputs"] = {mode: spike_inputs(pair.call("ours", mode)) for mode in MODES}
    if profile:
        for pair in pairs:
            if pair.timesteps == max(timesteps):
                progress(f"profile {pair.model_name} T={pair.timesteps} train ours")
                rows[(pair.model_name, pair.timesteps)]["profile_train_ours"] = profile_call(pair.call("ours", "train"))
    for row in rows.values():
        row["images_per_s"] = {
            a: {i: {m: batch / s for m, s in modes.items()} for i, modes in impls.items()}
            for a, impls in row["seconds"].items()
        }
        row["speedup"] = {
            a: {m: row["seconds"][a]["naive"][m] / row["seconds"][a]["ours"][m] for m in MODES} for a in allocators
        }
        if "tuned" in allocators and "default" in allocators:
            # ours as `esvae train` runs it (tuned heap) against the naive port with glibc's defaults
            row["speedup"]["ours_tuned_vs_naive_default"] = {
                m: row["seconds"]["default"]["naive"][m] / row["seconds"]["tuned"]["ours"][m] for m in MODES
            }
        if memory:
            row["memory_ratio"] = {
                m: row["peak_bytes"]["ours"][m] / max(row["peak_bytes"]["naive"][m], 1) for m in MODES
            }
        if "peak_rss_bytes" in row and "peak_rss_error" not in row:
            hwm = {
                a: {i: {m: v["vmhwm_bytes"] for m, v in modes.items()} for i, modes in impls.items()}
                for a, impls in row["peak_rss_bytes"].items()
            }
            row["rss_ratio"] = {a: {m: hwm[a]["ours"][m] / hwm[a]["naive"][m] for m in RSS_MODES} for a in hwm}
            if "tuned" in hwm and "default" in hwm:
                row["rss_ratio"]["ours_tuned_vs_naive_default"] = {
                    m: hwm["tuned"]["ours"][m] / hwm["default"]["naive"][m] for m in RSS_MODES
                }
        fastest = row["seconds"].get("tuned", row["seconds"].get(allocators[0]))["ours"]
        row["fraction_of_flop_bound"] = {m: (batch / fastest[m]) / row["flop_bound_images_per_s"][m] for m in MODES}
    return {
        "what": (
            "images/s of one training step (forward, loss, backward, AdamW), the evaluation forward and "
            "generation, ours vs a naive port of the original approach, same weights and draws"
        ),
        "conditions": {
            "setting": setting,
            "batch": batch,
            "timesteps": list(timesteps),
            "models": list(models),
            "weights": "paper configuration, random initialisation (seed 0)"
            + (f", overrides {overrides}" if overrides else ""),
            "images": "random, uniform in [-1, 1] (speed does not depend on pixel values)",
            "numerics_check": (
                f"float64 copies, first {min(check_batch or batch, batch)} images: identical spikes, "
                f"outputs within {OUTPUT_ATOL_FLOAT64:g}, gradients within {GRAD_RTOL_FLOAT64:g} "
                "relative; float32 differences reported alongside"
            ),
            "repeats": repeats,
            "statistic": (
                "median seconds per call after one warm-up call; naive and ours "
                + ("each in a process of its own (esvae_bench.worker), " if dev.type == "cpu" else "")
                + "called in turn, every sample in samples_seconds"
            ),
            "peak_memory": (
                "CUDA caching allocator's peak during one call, above what was allocated before"
                if dev.type == "cuda"
                else "PyTorch CPU allocations minus frees during one call (profiler memory events; "
                "the compiled kernels' per-image scratch rows, numpy arrays under 1 MB, are not seen)"
            ),
            "allocators": {a: ALLOCATOR_LABELS[a] for a in allocators},
            "peak_rss": (
                "VmHWM of a fresh process per (implementation, allocator) that builds both models "
                "and runs 3 training steps, at the largest T; rss_before_bytes is its VmRSS just before the first "
                "call (Python, torch, the models: the same for both implementations)"
            ),
            "spike_inputs": (
                "per mode, the convolutions whose input is spikes during one call of ours, how many ran "
                "spike-driven (esvae.spiking.spike_conv: forward and weight gradient from the spikes that "
                "fired; its speed depends on the firing rate) and the firing rate of their inputs; at "
                "random initialisation, in the bench's process after its own few training steps (peak memory, FLOPs)"
            ),
            "flop_bound": (
                "flops_per_image: the dense FLOPs of our call's matrix products and convolutions, forward and "
                "backward, from their shapes (torch FlopCounterMode); flop_bound_images_per_s: the "
                "machine's dense float32 matrix-product rate (dense_flops_per_second, measured in this "
                "process) divided by them; fraction_of_flop_bound: our images/s (heap kept where timed) "
                "over that bound"
            ),
        },
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "dense_flops_per_second": dense,
        },
        "numerics_ok": all(r["numerics"]["ok"] for r in rows.values()),
        "rows": list(rows.values()),
    }


def format_table(report: Dict[str, Any]) -> str:
    """A Markdown table of the report: one line per model, T and mode."""
    allocators = list(report["conditions"]["allocators"])
    present = [a for a in allocators if all(a in r["seconds"] for r in report["rows"])]
    head = ["model", "T", "mode"]
    for a in present:
        head += [f"naive img/s ({a})", f"ours img/s ({a})", f"speed-up ({a})"]
    if len(present) == 2:
        head.append("speed-up, ours tuned vs naive default")
    memory = all("peak_bytes" in r for r in report["rows"])
    if memory:
        head += ["peak MB naive", "peak MB ours", "memory ratio"]
    head.append("numerics (float64)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        n = r["numerics"]
        d = n["float64"]
        worst = max(d["train_output_max_abs_diff"], d["eval_output_max_abs_diff"], d["sample_max_abs_diff"])
        check = (
            f"{'same' if n['ok'] else 'MISMATCH'}: {d['spike_mismatches']} spikes differ, "
            f"outputs {worst:.0e}, grads {d['grad_max_rel_err']:.0e}"
        )
        for mode in MODES:
            cells = [r["model"], str(r["timesteps"]), mode]
            for a in present:
                ips = r["images_per_s"][a]
                cells += [f"{ips['naive'][mode]:.1f}", f"{ips['ours'][mode]:.1f}", f"{r['speedup'][a][mode]:.2f}x"]
            if len(present) == 2:
                cells.append(f"{r['speedup']['ours_tuned_vs_naive_default'][mode]:.2f}x")
            if memory:
                pb = r["peak_bytes"]
                cells += [
                    f"{pb['naive'][mode] / 2**20:.0f}",
                    f"{pb['ours'][mode] / 2**20:.0f}",
                    f"{r['memory_ratio'][mode]:.2f}",
                ]
            cells.append(check)
            lines.append("| " + " | ".join(cells) + " |")
    for r in report["rows"]:
        if "peak_rss_error" in r:
            lines += [
                "",
                f"Peak resident memory of {r['model']} T={r['timesteps']} not measured: {r['peak_rss_error']}",
            ]
        elif "peak_rss_bytes" in r:
            lines.append("")
            parts = []
            for a, impls in r["peak_rss_bytes"].items():
                for m in RSS_MODES:
                    parts.append(
                        f"{m} ({a}) naive {impls['naive'][m]['vmhwm_bytes'] / 2**20:.0f} MB, "
                        f"ours {impls['ours'][m]['vmhwm_bytes'] / 2**20:.0f} MB "
                        f"({r['rss_ratio'][a][m]:.2f})"
                    )
            cross = r["rss_ratio"].get("ours_tuned_vs_naive_default")
            before = next(iter(r["peak_rss_bytes"].values()))["ours"]["train"]["rss_before_bytes"]
            lines.append(
                f"Peak resident memory (VmHWM, fresh process each, {before / 2**20:.0f} MB resident before "
                f"the first call) of {r['model']} T={r['timesteps']}: "
                + "; ".join(parts)
                + (f"; ours heap kept / naive glibc defaults, train {cross['train']:.2f}." if cross else ".")
            )
    for r in report["rows"]:
        if "flops_per_image" in r:
            f, b, frac = r["flops_per_image"], r["flop_bound_images_per_s"], r["fraction_of_flop_bound"]
            lines.append("")
            lines.append(
                f"FLOP bound of {r['model']} T={r['timesteps']}: "
                + "; ".join(
                    f"{m} {f[m] / 1e9:.3f} GFLOP/image, bound {b[m]:.0f} img/s, ours at {frac[m]:.0%}" for m in MODES
                )
                + " (dense float32 matrix products at "
                + f"{report['machine']['dense_flops_per_second'] / 1e9:.0f} GFLOP/s; "
                "ours skips the spikes that did not fire, so it can pass the dense bound)."
            )
        if "spike_inputs" in r:
            lines.append("")
            lines.append(
                f"Convolutions on spikes, {r['model']} T={r['timesteps']}: "
                + "; ".join(
                    f"{m} {v['spike_driven']} of {v['convolutions_on_spikes']} spike-driven, "
                    f"firing rate {v['firing_rate']:.1%}"
                    for m, v in r["spike_inputs"].items()
                )
                + " (the spike-driven kernels' speed depends on that rate)."
            )
    for r in report["rows"]:
        if "profile_train_ours" in r:
            prof = r["profile_train_ours"]
            shares = ", ".join(f"{k} {v / prof['total_ms']:.0%}" for k, v in prof["groups_ms"].items())
            lines.append("")
            lines.append(
                f"Profile of our {r['model']} training step at T={r['timesteps']} "
                f"({prof['total_ms']:.0f} ms of self CPU time under the profiler): {shares}."
            )
    m, c = report["machine"], report["conditions"]
    lines.append("")
    where = (
        m["device"] if m["device"] != "cpu" else f"{m['cpu']} ({m['cores']} cores), {m['torch_threads']} torch threads"
    )
    setting = c.get("setting", c.get("dataset_config"))  # a report saved before the key was renamed
    lines.append(
        f"{where}, torch {m['torch']}; "
        f"batch {c['batch']}; {setting} setting, {c['weights']}; {c['statistic']}, {c['repeats']} timed; "
        f"numerics: {c['numerics_check']}."
    )
    return "\n".join(lines)


def write_report(report: Dict[str, Any], path: os.PathLike) -> None:
    from pathlib import Path

    from esvae.files import write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(path), report)


__all__ = [
    "run_bench",
    "format_table",
    "write_report",
    "check_numerics",
    "build_pair",
    "peak_memory_bytes",
    "profile_call",
    "MODES",
]
