"""FSVAE/TAID in eval mode: stepping the voting MLPs once per time step against the original's
prefix passes, in the same process (same model, same inputs, same generator).

    python benchmarks/fsvae_stepwise.py [--setting fashion] [--timesteps 16] [--n 64] [--repeats 3]

Prints, for generation (``sample``) and for eval-mode reconstruction (``forward``): seconds per
image for both paths, the speed-up, and whether the outputs are identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import esvae
from esvae.metrics import time_sampling
from esvae.runtime import tune_allocator


def _set_stepwise(model, on: bool) -> None:
    model.posterior.stepwise = model.prior.stepwise = on


def _time_forward(model, x, repeats: int) -> float:
    times = []
    with torch.no_grad():
        model(x, torch.Generator().manual_seed(0))  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fsvae", choices=["fsvae", "taid"])
    parser.add_argument("--setting", "--dataset", dest="setting", default="fashion", help="the paper setting")
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tune_allocator()
    torch.manual_seed(0)
    model = esvae.build_model(args.model, args.setting, timesteps=args.timesteps).eval()
    size, channels = model.config.image_size, model.config.in_channels
    x = torch.rand(args.n, channels, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    print(
        f"{args.model} ({args.setting} setting, T={args.timesteps}, random init, eval mode), n={args.n}, "
        f"CPU with {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    outputs, costs, fwd = {}, {}, {}
    for stepwise in (False, True):
        _set_stepwise(model, stepwise)
        costs[stepwise] = time_sampling(model, n=args.n, repeats=args.repeats)
        fwd[stepwise] = _time_forward(model, x, args.repeats)
        with torch.no_grad():
            outputs[stepwise] = (
                model.sample(8, torch.Generator().manual_seed(2)),
                model(x[:8], torch.Generator().manual_seed(3)).reconstruction,
            )
    same = all(torch.equal(a, b) for a, b in zip(outputs[False], outputs[True]))
    for what, prefix, step in (
        ("sample()", costs[False].seconds, costs[True].seconds),
        ("forward()", fwd[False], fwd[True]),
    ):
        print(
            f"  {what:10s} prefix passes {1000 * prefix / args.n:8.3f} ms/image   stepwise {1000 * step / args.n:8.3f} "
            f"ms/image   speed-up x{prefix / step:.2f}"
        )
    print(f"  outputs identical: {same}")


if __name__ == "__main__":
    main()
