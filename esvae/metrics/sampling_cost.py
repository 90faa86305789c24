"""How long a model's ``sample(n)`` takes: wall-clock time per generated image, labelled with the
conditions that produced it (model, setting, T, batch, device, threads, repeats).

FSVAE and TAID generate autoregressively (their prior MLP stepped T times), ESVAE draws a prior
rate and samples once, the ANN VAE decodes a Gaussian draw; this helper makes the comparison one
call per model. Timing uses ``time.perf_counter`` after a warm-up call, with CUDA
synchronised before each clock read, and reports the median over repeats.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import nn


@dataclass(frozen=True)
class SamplingCost:
    model: str
    setting: str  # the paper setting the model was built with
    timesteps: Optional[int]
    n: int  # images generated per repeat
    batch_size: int  # images per sample() call
    device: str
    threads: int  # torch intra-op threads (CPU)
    repeats: int
    warmup_calls: int
    seconds: float  # median wall time to generate n images
    seconds_all: List[float]  # every repeat, in order

    @property
    def images_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    @property
    def milliseconds_per_image(self) -> float:
        return 1000.0 * self.seconds / self.n

    def label(self) -> str:
        t = f", T={self.timesteps}" if self.timesteps is not None else ""
        return (
            f"{self.model} ({self.setting} setting{t}) sample(): {self.milliseconds_per_image:.3f} ms/image, "
            f"{self.images_per_second:.1f} images/s; n={self.n} in batches of {self.batch_size} on {self.device}"
            f" ({self.threads} threads), median of {self.repeats} after {self.warmup_calls} warm-up call(s)"
        )

    def to_dict(self) -> Dict:
        return {
            **asdict(self),
            "images_per_second": self.images_per_second,
            "milliseconds_per_image": self.milliseconds_per_image,
        }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_sampling(
    model: nn.Module,
    n: int,
    batch_size: Optional[int] = None,
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> SamplingCost:
    """Time ``model.sample`` generating ``n`` images in calls of at most ``batch_size`` (default n).

    The model runs in eval mode (its previous mode is restored afterwards); each repeat draws from
    a generator seeded with ``seed`` on the model's device, so every repeat generates the same
    images. ``warmup`` untimed calls of one batch come first (allocator, kernel selection).
    """
    for name, value in (("n", n), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    batch_size = n if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup!r}")
    param = next(model.parameters())
    device = param.device
    was_training = model.training
    model.eval()
    try:
        times = _timed_repeats(model, n, batch_size, repeats, warmup, seed, clock, device)
    finally:
        model.train(was_training)
    config = getattr(model, "config", None)
    return SamplingCost(
        model=getattr(model, "model_name", type(model).__name__),
        setting=getattr(model, "setting", "?"),
        timesteps=getattr(config, "timesteps", None),
        n=n,
        batch_size=batch_size,
        device=str(device),
        threads=torch.get_num_threads(),
        repeats=repeats,
        warmup_calls=warmup,
        seconds=statistics.median(times),
        seconds_all=times,
    )


def _timed_repeats(model, n, batch_size, repeats, warmup, seed, clock, device) -> List[float]:
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    for _ in range(warmup):
        model.sample(sizes[0], generator=torch.Generator(device=device).manual_seed(seed))
    _synchronize(device)
    times = []
    for _ in range(repeats):
        generator = torch.Generator(device=device).manual_seed(seed)
        _synchronize(device)
        start = clock()
        for size in sizes:
            model.sample(size, generator=generator)
        _synchronize(device)
        times.append(clock() - start)
    return times
