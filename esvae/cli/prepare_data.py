"""Decode a dataset into the tensor cache and describe its splits (the workflow's first job)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ._common import add_environment_args, data_names


def register(sub) -> None:
    pd_ = sub.add_parser("prepare-data", help="decode a dataset's splits into the tensor cache and describe them")
    pd_.add_argument("--dataset", required=True, choices=data_names())
    pd_.add_argument("--out", required=True, help="JSON file describing the splits (sizes, label, image hash)")
    add_environment_args(pd_)
    pd_.set_defaults(run=run)


def run(args) -> int:
    import hashlib

    from ..data import data_source, load_split
    from ..results import write_result

    source = data_source(args.dataset)
    info: Dict[str, Any] = {"dataset": source.name, "label": source.label, "splits": {}}
    for split in source.splits:
        data = load_split(source.name, split, args.data_root, args.download)
        info["splits"][split] = {
            "images": len(data),
            "shape": list(data.images.shape[1:]),
            "sha256": hashlib.sha256(data.images.numpy().tobytes()).hexdigest(),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, "data", info)
    print(
        f"{source.label}: "
        + ", ".join(f"{k} {v['images']} images" for k, v in info["splits"].items())
        + f"; described in {out}"
    )
    return 0
