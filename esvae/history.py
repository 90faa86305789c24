"""``history.tsv``: one row per epoch of a training run (epoch 0: the untrained model)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional

from .files import write_text_atomic


def history_columns(model) -> List[str]:
    """``history.tsv`` columns: the model's loss terms and statistics, for train and test."""
    names = list(model.loss_terms) + list(model.stat_names)
    return (
        ["epoch", "step"]
        + [f"train_{k}" for k in names]
        + [f"test_{k}" for k in names]
        + ["train_images_per_s", "epoch_seconds"]
    )


class History:
    """The rows so far, rewritten whole (atomically) to ``path`` at every :meth:`record`."""

    def __init__(self, path: Path, columns: List[str], rows: Optional[List[Dict[str, float]]] = None):
        self.path, self.columns, self.rows = path, columns, list(rows or [])

    def record(self, row: Optional[Dict[str, float]] = None) -> None:
        """Append ``row`` (if any) and write the file: the header and every row, empty cells for
        the columns a row lacks."""
        if row is not None:
            self.rows.append(row)
        lines = ["\t".join(self.columns)]
        for r in self.rows:
            lines.append("\t".join(_cell(r.get(c)) for c in self.columns))
        write_text_atomic(self.path, "\n".join(lines) + "\n")


def _cell(value) -> str:
    return "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))


def read_history(path: Path) -> List[Dict[str, float]]:
    """The rows of a ``history.tsv``: column -> number (empty and non-numeric cells left out)."""
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            cells = {}
            for name, cell in row.items():
                if cell in ("", None):
                    continue
                try:
                    cells[name] = float(cell)
                except ValueError:
                    continue
            rows.append(cells)
    return rows
