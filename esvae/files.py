"""Result files: atomic writes, clear full-disk errors, and validated reads.

Every file a pipeline rule declares is written through :func:`atomic_path` (a temporary file in
the same folder, flushed to disk, then renamed over the target), so a job killed at any moment
leaves either the previous complete version or nothing, never a half-written file that Snakemake
or the report would take as complete. A full disk (or quota) becomes :class:`StorageError`, one
line naming the file and the free space. What a result file holds is checked by
:mod:`esvae.results` when it is written and when it is read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

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
