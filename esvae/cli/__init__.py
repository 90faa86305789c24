"""Command line: ``python -m esvae COMMAND ...``, one module per command in this package (each
with ``register(sub)``, which adds its arguments, and ``run(args)``); what they share is in
``_common``. The workflow's own commands (``track``, ``report``) are ``python -m esvae_pipeline``'s.

User errors (a wrong name, a bad value, a missing dataset) print one line ``esvae: error: ...`` and
exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from ..errors import EsvaeError
from . import describe, evaluate, fad, prepare_data, probe, train
from ._common import OneLineParser, positive_int

COMMANDS = (train, describe, evaluate, probe, fad, prepare_data)  # in --help's order


def build_parser(prog: str, description: str, commands) -> argparse.ArgumentParser:
    """A parser with one subcommand per module of ``commands`` (``register(sub)`` and ``run(args)``)."""
    parser = OneLineParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        command.register(sub)
    for command_parser in sub.choices.values():  # every command takes --threads (the workflow passes each rule's)
        command_parser.add_argument(
            "--threads",
            type=positive_int,
            default=None,
            help="CPU threads for torch (default: torch's own choice)",
        )
    return parser


def _build_parser() -> argparse.ArgumentParser:
    return build_parser("python -m esvae", "Spiking VAE benchmark: train and inspect models.", COMMANDS)


def main(argv: Optional[List[str]] = None) -> int:
    return run(_build_parser(), argv)


def run(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` and run its command: torch threads and the allocator set first, an expected
    failure as one line ``esvae: error: ...`` and its exit status."""
    from ..runtime import tune_allocator

    args = parser.parse_args(argv)
    # A log file on a full disk must not print a traceback per record; the write that fails
    # next reports the full disk in one line.
    logging.raiseExceptions = False
    if getattr(args, "tune_allocator", True):  # the bench times glibc's defaults first, then keeps the heap itself
        tune_allocator()
    try:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        return args.run(args)
    except EsvaeError as exc:
        print(f"esvae: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except OSError as exc:  # an unwritable --out, a full disk: the environment, not a bug
        print(f"esvae: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("esvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
