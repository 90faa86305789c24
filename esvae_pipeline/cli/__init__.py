"""``python -m esvae_pipeline COMMAND``: the workflow's own commands, with the library's command-line
conventions (one-line errors, ``--threads``)."""

from __future__ import annotations

import sys
from typing import List, Optional

from esvae.cli import build_parser, run

from . import browse, report, track

COMMANDS = (track, report, browse)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser("python -m esvae_pipeline", "The benchmark pipeline's commands.", COMMANDS)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
