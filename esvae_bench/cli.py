"""``python -m esvae_bench``: time this project's training step, evaluation and generation against a
naive port of the original approach, after checking that both compute the same (methodology:
``docs/performance.md``). Same conventions as ``python -m esvae`` (one-line errors, ``--threads``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from esvae.cli import run as run_command
from esvae.cli._common import OneLineParser, positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m esvae_bench",
        description="time training, evaluation and sampling against a naive port of the original approach, "
        "after checking both compute the same",
    )
    parser.add_argument("--models", nargs="+", choices=("esvae", "fsvae"), default=["esvae", "fsvae"])
    parser.add_argument(
        "--timesteps", nargs="+", type=positive_int, default=[4, 8, 16], help="T values (default 4 8 16)"
    )
    parser.add_argument("--batch", type=positive_int, default=64, help="images per call (default 64)")
    parser.add_argument(
        "--setting",
        "--dataset",  # its name before settings and datasets were told apart
        dest="setting",
        choices=("mnist", "fashion", "cifar10", "celeba"),
        default="fashion",
        help="the paper setting to build (default fashion: 1x32x32, L=32 / 128)",
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed calls per measurement, median reported")
    parser.add_argument(
        "--allocator",
        choices=("both", "default", "tuned"),
        default="both",
        help="glibc allocator settings to time under (default both: defaults, then the heap kept)",
    )
    parser.add_argument(
        "--check-batch", type=positive_int, default=16, help="images in the float64 numerics check (default 16)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile our training step at the largest T (where the remaining time goes)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--json", default="benchmarks/speed/bench.json", help="where to write the report (JSON)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: all cores)")
    # glibc's defaults are timed first, then the bench keeps the heap itself: no allocator tuning up front
    parser.set_defaults(run=run, tune_allocator=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(build_parser(), argv)


def run(args) -> int:
    import torch

    from esvae.device import resolve_device

    from . import format_table, run_bench, write_report

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    allocators = {"both": ("default", "tuned"), "default": ("default",), "tuned": ("tuned",)}[args.allocator]
    report = run_bench(
        models=args.models,
        timesteps=args.timesteps,
        batch=args.batch,
        setting=args.setting,
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
