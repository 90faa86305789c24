"""Where the package's log records go: each command's own log file in its output folder."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def log_to_file(out_dir: Path, filename: str = "train.log"):
    """Copy the package's log records into ``out_dir / filename`` (appending) for the block."""
    handler = logging.FileHandler(out_dir / filename, mode="a")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger("esvae")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
