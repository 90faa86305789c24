"""Compile the tables, figures and claims from a results folder."""

from __future__ import annotations

from pathlib import Path

from esvae.cli._common import setup_logging


def register(sub) -> None:
    rp = sub.add_parser("report", help="compile the tables and figures from the files under a results folder")
    rp.add_argument("--results", default="results", help="the workflow's results folder (holds config.json, runs/)")
    rp.add_argument("--tables", default=None, help="default: RESULTS/tables")
    rp.add_argument("--figures", default=None, help="default: RESULTS/figures")
    rp.set_defaults(run=run)


def run(args) -> int:
    from ..report import compile_report

    setup_logging()
    written = compile_report(Path(args.results), args.tables, args.figures)
    print(f"{len(written['tables'])} table files and {len(written['figures'])} figures written")
    return 0
