"""Resuming a training run: what its saved state holds, when it is saved, and how a run stops.

``resume.pt`` in the output folder holds the whole training state (weights, optimiser, the
position in the epoch, every random state, the epoch's running sums, the history and the resolved
settings); :class:`Checkpointing` decides when it is written and loads it back, refusing another
run's state by naming the settings that differ. :class:`StopSignals` turns SIGTERM/SIGINT into a
save and a clean stop; :func:`only_trainer` keeps a second process out of the folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .checkpoints import mistyped_entries, one_line, read_checkpoint
from .errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"
# The resolved settings that define a training run: a resume state that differs in any is refused.
RUN_DEFINING_KEYS = (
    "model",
    "dataset",
    "model_setting",
    "model_config",
    "train_config",
    "train_images",
    "test_images",
    "steps_per_epoch",
    "derived",
    "eval_at_init",
    "device_type",
)
_DESCRIPTIVE = ("lr_derivation", "lr_rule")  # train_config entries that describe, not define, the run (lr does)


def run_defining(resolved: Dict) -> Dict:
    out = {k: resolved.get(k, "<absent>") for k in RUN_DEFINING_KEYS}
    if isinstance(out["train_config"], dict):
        out["train_config"] = {k: v for k, v in out["train_config"].items() if k not in _DESCRIPTIVE}
    return out


@contextlib.contextmanager
def only_trainer(out_dir: Path):
    """Hold an exclusive lock on ``out_dir/.train.lock`` for the run: a second process training into
    the same folder (a job run twice, a lost scheduler job still alive) is refused instead of both
    overwriting each other's state."""
    import fcntl

    fd = os.open(out_dir / ".train.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another process is training into {out_dir} (it holds {out_dir / '.train.lock'}); "
                "wait for it or stop it, or use another --out"
            ) from None
        yield
    finally:
        os.close(fd)


def differences(saved, now, prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two nested dicts, as ``key: saved -> now``."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now), key=str):
            out += differences(saved.get(key, "<absent>"), now.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    if isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple)):
        saved, now = list(saved), list(now)
    return [] if saved == now else [f"{prefix[:-1]}: {saved!r} in the checkpoint, {now!r} now"]


def rng_states(model_gen: torch.Generator, device: torch.device) -> Dict:
    """Every random stream the loop may touch: the model's generator, torch's CPU and CUDA
    defaults, Python's and NumPy's (NumPy's key array stored as a tensor for weights-only loading)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "model": model_gen.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss),
    }


def set_rng_states(states: Dict, model_gen: torch.Generator, device: torch.device) -> None:
    import random

    import numpy as np

    model_gen.set_state(states["model"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


# The training_state entries a resume state must hold, with their types.
STATE_ENTRIES = {
    "epoch": int,
    "batch": int,
    "epoch_data_rng": torch.Tensor,
    "rng": dict,
    "epoch_sums": dict,
    "epoch_seen": int,
    "epoch_seconds": float,
    "history": list,
}


class Checkpointing:
    """Where and how often the training state is saved, and what the last save was."""

    def __init__(self, path: Path, every_steps: int, every_minutes: float):
        self.path, self.every_steps, self.every_minutes = path, every_steps, every_minutes
        self.last: Optional[str] = None  # "epoch E, batch B, step S": named when training fails or stops
        self.source: Optional[Path] = None  # the file a resumed run was loaded from
        self._since = time.monotonic()

    def due(self, step: int) -> bool:
        return bool(
            (self.every_steps and step % self.every_steps == 0)
            or (self.every_minutes and time.monotonic() - self._since >= 60 * self.every_minutes)
        )

    def describe_last(self) -> str:
        return f"last good checkpoint {self.path} ({self.last})" if self.last else "no checkpoint was saved yet"

    def saved(self, where: str) -> None:
        self.last, self._since = where, time.monotonic()
        log.info("checkpoint: %s saved to %s", where, self.path)

    def load(self, resolved: Dict, model, optimizer) -> Optional[Dict]:
        """The training state of a resume file in the output folder (weights and optimiser loaded
        into ``model``/``optimizer``), or None when there is none. Refuses another run's state by
        naming the settings that differ, and a damaged file by naming it."""
        source = self.path if self.path.exists() else self.path.with_name("checkpoint.pt")
        if not source.exists():
            return None
        try:
            ckpt = read_checkpoint(source)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; it holds this folder's training: delete it to start over") from None
        state = ckpt.get("training_state")
        diffs = differences(run_defining(ckpt["run_config"]), run_defining(resolved))
        if diffs:
            raise CheckpointError(
                f"{source} holds another run's state; differing settings: "
                + "; ".join(diffs)
                + f". Use another --out, or delete {source} to start this folder over"
            )
        bad = mistyped_entries(state, STATE_ENTRIES)
        if bad or not isinstance(state, dict):
            raise CheckpointError(
                f"{source} is damaged: its training state lacks {', '.join(bad)}; delete it to start over"
            )
        try:
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{source} is damaged: {one_line(exc)}; delete it to start over") from None
        threads = ckpt["run_config"].get("torch_threads")
        if threads != resolved["torch_threads"]:
            log.warning(
                "resuming with %s torch threads where the state was saved with %s: the result may differ "
                "in the last bits from an uninterrupted run",
                resolved["torch_threads"],
                threads,
            )
        self.last = f"epoch {state['epoch']}, batch {state['batch']}, step {ckpt['step']}"
        self.source = source
        state["step"] = ckpt["step"]
        return state


class StopSignals:
    """SIGTERM (a scheduler's pre-emption or time limit) and SIGINT during training: the current
    step finishes, the state is saved, training stops. A second signal stops at once."""

    def __enter__(self):
        self.received: Optional[int] = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        log.warning("%s received: stopping after the current step, with the state saved", signal.Signals(signum).name)

    def __exit__(self, *exc_info):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
