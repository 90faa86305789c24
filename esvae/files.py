"""Result files: atomic writes, clear full-disk errors, and validated reads.

Every file a pipeline rule declares is written through :func:`atomic_path` (a temporary file in
the same folder, flushed to disk, then renamed over the target), so a job killed at any moment
leaves either the previous complete version or nothing, never a half-written file that Snakemake
or the report would take as complete. A full disk (or quota) becomes :class:`StorageError`, one
line naming the file and the free space. Result JSON is checked against a small structural schema
when read (:func:`read_result`): a truncated or foreign file is refused with its path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from .errors import EsvaeError

_TEMP_MARK = ".tmp-"  # temporary names: .<name>.tmp-<random><suffix>, hidden and recognisable
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _file_mode() -> int:
    """What ``open`` would give a new file under the umask (mkstemp's files are 0600); read once,
    at import, because reading the umask means setting it."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


class StorageError(EsvaeError):
    """A result file could not be written because the disk (or quota) is full."""


class ResultFileError(EsvaeError):
    """A result file that is unreadable, truncated or not of the expected kind."""


def storage_error(path: Path, exc: OSError) -> StorageError:
    free = "unknown"
    with contextlib.suppress(OSError):
        free = f"{shutil.disk_usage(path.parent).free:,} bytes"
    return StorageError(
        f"cannot write {path}: {exc.strerror} ({free} free there without it); free some space, "
        "then run the same command again"
    )


@contextlib.contextmanager
def atomic_path(path: os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix, so writers that infer the format from it
    work), renamed over ``path`` when the block succeeds and removed when it fails. ``durable``
    also fsyncs the file before the rename (checkpoints)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}{_TEMP_MARK}", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)  # before measuring the free space
        if exc.errno in _FULL:
            raise storage_error(path, exc) from None
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None  # the target, not the temporary
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: os.PathLike) -> int:
    """Delete temporary files a killed writer left in ``folder``; returns how many."""
    count = 0
    for tmp in Path(folder).glob(f".*{_TEMP_MARK}*"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            count += 1
    return count


def write_text_atomic(path: os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    Serialised in memory first: torch's own file writer turns a full disk into a RuntimeError
    without its cause, Python's write keeps the errno."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path, durable=True) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def zip_damage(path: os.PathLike) -> Optional[str]:
    """What is wrong with the zip archive ``torch.save`` wrote at ``path``, or None. Its entries
    carry CRC-32s, but ``torch.load`` does not check them (a flipped bit in a tensor loads
    silently); this checks every entry (about 3 ms per MB). Not a zip at all (a legacy pickle, a
    truncated file, garbage) is None too: ``torch.load`` tells which."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # a damaged header or compressed stream: zipfile, zlib, struct errors
        return f"{type(exc).__name__}: {exc}"
    return None if bad is None else f"its entry {bad!r} fails its CRC-32 check (damaged on disk or in transfer)"


# What each kind of result file must hold, as far as the report and the tracker read it: key ->
# type, or a nested mapping of the same form; "?key" is optional (checked when present). "number"
# is a finite int/float, or None where a metric was refused (its reason recorded next to it).
_NUMBER = "number"
_METRIC = {"value": _NUMBER}
RESULT_SCHEMAS: Mapping[str, Mapping[str, Any]] = {
    "train": {
        "epochs": int,
        "train_images": int,
        "parameters": int,
        "reconstruction_mse": {"value": _NUMBER, "n": int, "split": str},
        "baseline_mean_image_mse": _METRIC,
    },
    "evaluate": {f"?{key}": _METRIC for key in ("reconstruction_mse", "fid", "kid", "fad", "inception_score")},
    "probe": {"information_retention": dict, "?decoder_robustness": dict},  # ANN VAE: rows None (no spikes)
    "config": {"model": str, "model_config": dict, "train_config": dict},
    "preset": {"preset": str},
}


def _check(value: Any, schema: Mapping[str, Any], where: str) -> None:
    for key, kind in schema.items():
        optional, key = key.startswith("?"), key.lstrip("?")
        if key not in value:
            if optional:
                continue
            raise ValueError(f"missing {where}{key}")
        item = value[key]
        if isinstance(kind, Mapping):
            if not isinstance(item, dict):
                raise ValueError(f"{where}{key} is {type(item).__name__}, expected an object")
            _check(item, kind, f"{where}{key}.")
        elif kind == _NUMBER:
            if item is not None and (
                isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item)
            ):
                raise ValueError(f"{where}{key} is {item!r}, expected a finite number")
        elif kind is int and (isinstance(item, bool) or not isinstance(item, int)):
            raise ValueError(f"{where}{key} is {item!r}, expected an integer")
        elif not isinstance(item, kind):
            raise ValueError(f"{where}{key} is {type(item).__name__}, expected {kind.__name__}")


def read_result(path: os.PathLike, kind: str) -> dict:
    """Read a result JSON of ``kind`` (:data:`RESULT_SCHEMAS`) and check its structure; a missing,
    truncated or foreign file raises :class:`ResultFileError` naming it and the rule to re-run."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
        if not isinstance(value, dict):
            raise ValueError(f"holds a JSON {type(value).__name__}, expected an object")
        _check(value, RESULT_SCHEMAS[kind], "")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ResultFileError(
            f"{path} is not a valid {kind} result file ({exc}); delete it and re-run the job that writes it"
        ) from None
    return value
