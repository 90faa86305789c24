"""Time the implementation against a naive port of the original approach."""

from __future__ import annotations

import os
import sys

from ._common import positive_int


def register(sub) -> None:
    b = sub.add_parser(
        "bench",
        help="time training, evaluation and sampling against a naive port of the "
        "original approach, after checking both compute the same",
    )
    b.add_argument("--models", nargs="+", choices=("esvae", "fsvae"), default=["esvae", "fsvae"])
    b.add_argument("--timesteps", nargs="+", type=positive_int, default=[4, 8, 16], help="T values (default 4 8 16)")
    b.add_argument("--batch", type=positive_int, default=64, help="images per call (default 64)")
    b.add_argument(
        "--dataset",
        choices=("mnist", "fashion", "cifar10", "celeba"),
        default="fashion",
        help="whose paper configuration to build (default fashion: 1x32x32, L=32 / 128)",
    )
    b.add_argument("--repeats", type=positive_int, default=3, help="timed calls per measurement, median reported")
    b.add_argument(
        "--allocator",
        choices=("both", "default", "tuned"),
        default="both",
        help="glibc allocator settings to time under (default both: defaults, then the heap kept)",
    )
    b.add_argument(
        "--check-batch", type=positive_int, default=16, help="images in the float64 numerics check (default 16)"
    )
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    b.add_argument(
        "--profile",
        action="store_true",
        help="also profile our training step at the largest T (where the remaining time goes)",
    )
    b.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    b.add_argument("--json", default="benchmarks/speed/bench.json", help="where to write the report (JSON)")
    b.set_defaults(run=run)


def run(args) -> int:
    import torch

    from ..bench import format_table, run_bench, write_report
    from ..device import resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    allocators = {"both": ("default", "tuned"), "default": ("default",), "tuned": ("tuned",)}[args.allocator]
    report = run_bench(
        models=args.models,
        timesteps=args.timesteps,
        batch=args.batch,
        dataset=args.dataset,
        repeats=args.repeats,
        allocators=allocators,
        memory=not args.no_memory,
        check_batch=args.check_batch,
        profile=args.profile,
        device=str(device),
        progress=lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True),
    )
    write_report(report, args.json)
    print(format_table(report))
    print(f"report written to {args.json}")
    if not report["numerics_ok"]:
        print("esvae: error: the two implementations disagree (see 'numerics' in the report)", file=sys.stderr)
        return 1
    return 0
