"""Training loop: AdamW at the paper's effective LR, per-epoch test evaluation, files in ``out_dir``.

Files written in ``out_dir`` (each atomically, so a killed job leaves the previous version):

* ``resume.pt``     -- while training: the whole state (weights, optimiser, position in the epoch,
  every RNG state, the epoch's running sums, the history, the resolved config), saved every
  ``checkpoint_every`` steps / ``checkpoint_minutes`` minutes and at the end of each epoch. The
  same command continues from it after any interruption (SIGKILL included); SIGTERM/SIGINT save
  it first. There is no LR scheduler (the paper's LR is constant); per-epoch schedules such as
  FSVAE's scheduled-sampling p are functions of the epoch and are recomputed.
* ``checkpoint.pt`` -- the final state (same format), renamed from ``resume.pt`` as the last step
* ``history.tsv``   -- one row per epoch (epoch 0 = the untrained model on the test split)
* ``metrics.json``  -- the final test reconstruction MSE with N, split and conditions
* ``reconstructions.png`` (rows alternate: test inputs, their reconstructions) and ``samples.png``
* ``config.json`` and ``train.log``
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from . import runtime
from .checkpoints import code_version, mistyped_entries, one_line, read_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import ImageSplit, data_source, first_n, iterate_batches, load_split, seeded_subset, to_model_range
from .errors import CheckpointError, ConfigError, TrainingDivergedError, TrainingInterrupted
from .files import atomic_path, remove_stale_temporaries, write_text_atomic
from .models.registry import build_model, count_parameters
from .results import write_result
from .runtime import cpu_name
from .samplers import RateOutOfRangeError

log = logging.getLogger(__name__)


def history_columns(model) -> List[str]:
    """``history.tsv`` columns: the model's loss terms and statistics, for train and test."""
    names = list(model.loss_terms) + list(model.stat_names)
    return (
        ["epoch", "step"]
        + [f"train_{k}" for k in names]
        + [f"test_{k}" for k in names]
        + ["train_images_per_s", "epoch_seconds"]
    )


EVAL_SEED_OFFSET = 1_000_003  # eval/sample generators are seeded apart from the training stream


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; unavailable CUDA is a ConfigError."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {spec!r}; expected auto, cpu, cuda or cuda:N")
    return device


def read_history(path: Path) -> List[Dict[str, float]]:
    """The rows of a ``history.tsv`` written by :func:`train`: column -> number (empty cells left out)."""
    import csv

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


class _NonFiniteLoss(Exception):
    def __init__(self, terms: Dict[str, torch.Tensor]):
        super().__init__("non-finite loss")
        self.terms = terms


def train_step(model, optimizer, images: torch.Tensor, generator: Optional[torch.Generator]):
    """One optimisation step exactly as ``esvae train`` runs it (also timed by ``esvae bench``):
    forward, loss, backward, optimiser step. Returns ``(out, terms)``; a non-finite loss raises
    before any weight changes."""
    out = model(images, generator=generator)
    terms = model.loss(images, out)
    if not torch.isfinite(terms["loss"]):
        raise _NonFiniteLoss(terms)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    return out, terms


@torch.no_grad()
def evaluate(model, data: ImageSplit, batch_size: int, device: torch.device, seed: int) -> Dict[str, float]:
    """Test-split loss terms and statistics in eval mode, averaged per image.

    Each batch's means are weighted by its size, so the MSE is exactly the mean over images of the
    per-image pixel MSE (the original code averaged batch means). A sampled latent is drawn from a
    generator seeded by ``seed``, so the number is reproducible; a batch-level term such as MMD
    is averaged over batches weighted by their size.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    totals: Dict[str, float] = {}
    n = 0
    for images in iterate_batches(data.images, batch_size, shuffle=False, device=device):
        out = model(images, generator=gen)
        b = images.shape[0]
        for key, value in {**model.loss(images, out), **model.batch_stats(out)}.items():
            totals[key] = totals.get(key, 0.0) + value.item() * b
        n += b
    model.train(was_training)
    return {k: v / max(n, 1) for k, v in totals.items()}


def save_image_grids(model, test: ImageSplit, out_dir: Path, device: torch.device, seed: int, n: int = 32) -> None:
    """``reconstructions.png``: rows of 8 test inputs alternating with their reconstructions;
    ``samples.png``: 64 generated images."""
    from torchvision.utils import save_image

    was_training = model.training
    model.eval()
    with torch.no_grad():
        gen = torch.Generator(device=device).manual_seed(seed)
        inputs = to_model_range(test.images[:n]).to(device)
        recon = model(inputs, generator=gen).reconstruction
        rows = []
        for start in range(0, inputs.shape[0], 8):
            rows += [inputs[start : start + 8], recon[start : start + 8]]
        with atomic_path(out_dir / "reconstructions.png") as tmp:
            save_image((torch.cat(rows) + 1) / 2, tmp, nrow=8, padding=2, pad_value=1.0)
        samples = model.sample(64, generator=gen)
        with atomic_path(out_dir / "samples.png") as tmp:
            save_image((samples + 1) / 2, tmp, nrow=8, padding=2, pad_value=1.0)
    model.train(was_training)


@dataclass
class TrainResult:
    out_dir: Path
    history: List[Dict[str, float]]
    metrics: Dict


@contextlib.contextmanager
def log_to_file(out_dir: Path, filename: str = "train.log"):
    """Copy the package's log records into ``out_dir / filename`` (appending) for the block."""
    handler = logging.FileHandler(out_dir / filename, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("esvae")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


RESUME_FILE = "resume.pt"
RERUN_HINT = (
    " (the same command resumes there and, with the same seed, diverges again: change the settings and "
    "use another --out)"
)
# The resolved settings that define a training run: a resume state that differs in any is refused.
RUN_DEFINING_KEYS = (
    "model",
    "dataset",
    "model_config_dataset",
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


def _run_defining(resolved: Dict) -> Dict:
    out = {k: resolved.get(k, "<absent>") for k in RUN_DEFINING_KEYS}
    if isinstance(out["train_config"], dict):
        out["train_config"] = {k: v for k, v in out["train_config"].items() if k not in _DESCRIPTIVE}
    return out


def train(
    *,
    model_name: str,
    dataset: str,
    out_dir: os.PathLike,
    train_config: TrainConfig,
    model_overrides: Optional[Dict] = None,
    data_root: Optional[os.PathLike] = None,
    download: bool = False,
    device: str = "auto",
    eval_at_init: bool = True,
    progress: Optional[bool] = None,
    checkpoint_every: int = 0,
    checkpoint_minutes: float = 10.0,
) -> TrainResult:
    """Train ``model_name`` on ``dataset`` (a data name, e.g. "fashion" or "mnist5k"); see module doc.

    The full training state goes to ``out_dir/resume.pt`` every ``checkpoint_every`` steps (0: off),
    every ``checkpoint_minutes`` minutes (0: off) and at the end of each epoch; a call whose
    ``out_dir`` holds one continues from it (same settings required) and, on CPU with the same
    thread count, ends with the bits an uninterrupted run would have.
    """
    source = data_source(dataset)
    dev = resolve_device(device)
    cfg = train_config
    if cfg.epochs < 0 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise ConfigError(f"need epochs >= 0, batch_size >= 1 and lr > 0; got {cfg.epochs}, {cfg.batch_size}, {cfg.lr}")
    if checkpoint_every < 0 or not checkpoint_minutes >= 0:
        raise ConfigError(f"checkpoint intervals must be >= 0; got {checkpoint_every} steps, {checkpoint_minutes} min")
    # Names and data first: a wrong model key or a missing dataset leaves no output folder behind.
    from .models.registry import resolve_config

    resolve_config(model_name, source.model_dataset, **(model_overrides or {}))
    train_data = seeded_subset(load_split(source.name, "train", data_root, download), cfg.train_subset)
    test_full = load_split(source.name, "test", data_root, download)
    test_data, test_label = first_n(test_full, cfg.test_subset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _only_trainer(out_dir), log_to_file(out_dir):
        return _train(
            model_name,
            source,
            out_dir,
            cfg,
            model_overrides or {},
            train_data,
            test_data,
            test_label,
            dev,
            eval_at_init,
            sys.stderr.isatty() if progress is None else progress,
            _Checkpointing(out_dir / RESUME_FILE, checkpoint_every, checkpoint_minutes),
        )


@contextlib.contextmanager
def _only_trainer(out_dir: Path):
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


def _differences(saved, now, prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two nested dicts, as ``key: saved -> now``."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now), key=str):
            out += _differences(saved.get(key, "<absent>"), now.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    if isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple)):
        saved, now = list(saved), list(now)
    return [] if saved == now else [f"{prefix[:-1]}: {saved!r} in the checkpoint, {now!r} now"]


def _rng_states(model_gen: torch.Generator, device: torch.device) -> Dict:
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


def _set_rng_states(states: Dict, model_gen: torch.Generator, device: torch.device) -> None:
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
_STATE_ENTRIES = {
    "epoch": int,
    "batch": int,
    "epoch_data_rng": torch.Tensor,
    "rng": dict,
    "epoch_sums": dict,
    "epoch_seen": int,
    "epoch_seconds": float,
    "history": list,
}


class _Checkpointing:
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
        diffs = _differences(_run_defining(ckpt["train_config"]), _run_defining(resolved))
        if diffs:
            raise CheckpointError(
                f"{source} holds another run's state; differing settings: "
                + "; ".join(diffs)
                + f". Use another --out, or delete {source} to start this folder over"
            )
        bad = mistyped_entries(state, _STATE_ENTRIES)
        if bad or not isinstance(state, dict):
            raise CheckpointError(
                f"{source} is damaged: its training state lacks {', '.join(bad)}; delete it to start over"
            )
        try:
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{source} is damaged: {one_line(exc)}; delete it to start over") from None
        threads = ckpt["train_config"].get("torch_threads")
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


class _StopSignals:
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


def _train(
    model_name,
    source,
    out_dir,
    cfg,
    overrides,
    train_data,
    test_data,
    test_label,
    dev,
    eval_at_init,
    progress,
    checkpoints: _Checkpointing,
):
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    model = build_model(model_name, source.model_dataset, **overrides).to(dev)

    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    derived = model.configure_training(steps_per_epoch=steps_per_epoch)  # e.g. the ANN VAE's KLD weight
    groups = model.param_groups(cfg.lr, cfg.prior_lr_multiplier)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    resolved = {
        "model": model_name,
        "dataset": source.name,
        "data_label": source.label,
        "model_config_dataset": source.model_dataset,
        "model_config": model.config.to_dict(),
        "train_config": cfg.to_dict(),
        "device": str(dev),
        "device_type": dev.type,
        "torch_threads": torch.get_num_threads(),
        "allocator_tuned": runtime.ALLOCATOR_TUNED,
        "parameters": count_parameters(model),
        "train_images": len(train_data),
        "test_images": len(test_data),
        "steps_per_epoch": steps_per_epoch,
        "derived": derived,
        "eval_at_init": eval_at_init,
        "learning_rates": {g["name"]: g["lr"] for g in groups},
        "checkpoint_every": {"steps": checkpoints.every_steps, "minutes": checkpoints.every_minutes},
        "code_version": code_version(),
        "torch_version": str(torch.__version__),
    }
    removed = remove_stale_temporaries(out_dir)
    if removed:
        log.info("removed %d temporary file(s) left in %s by an interrupted write", removed, out_dir)
    state = checkpoints.load(resolved, model, optimizer)
    write_result(out_dir / "config.json", "config", resolved)
    log.info(
        "training %s on %s: %d train / %d test images, T=%d, batch %d, %d steps/epoch, device %s",
        model_name,
        source.label,
        len(train_data),
        len(test_data),
        model.config.timesteps,
        cfg.batch_size,
        steps_per_epoch,
        dev,
    )
    log.info(
        "effective LR %g (%s); parameter-group LRs %s; AdamW betas %s, weight decay %g",
        cfg.lr,
        cfg.lr_derivation or "given on the command line",
        {g["name"]: g["lr"] for g in groups},
        tuple(cfg.betas),
        cfg.weight_decay,
    )
    if derived:
        log.info("derived from the data: %s", derived)

    history: List[Dict[str, float]] = []
    eval_seed = cfg.seed + EVAL_SEED_OFFSET
    columns = history_columns(model)

    def record(row: Optional[Dict[str, float]] = None) -> None:
        if row is not None:
            history.append(row)
        lines = ["\t".join(columns)]
        for r in history:
            lines.append(
                "\t".join(
                    "" if r.get(c) is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]))
                    for c in columns
                )
            )
        write_text_atomic(out_dir / "history.tsv", "\n".join(lines) + "\n")

    data_gen = torch.Generator().manual_seed(cfg.seed)
    model_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    epoch, batch, step = 1, 0, 0
    partial: Dict[str, Any] = {"epoch_sums": {}, "epoch_seen": 0, "epoch_seconds": 0.0}  # the epoch so far
    if state is not None:
        epoch, batch, step = state["epoch"], state["batch"], state["step"]
        history.extend(state["history"])
        partial = {k: state[k] for k in partial}
        data_gen.set_state(state["epoch_data_rng"])
        try:
            _set_rng_states(state["rng"], model_gen, dev)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{checkpoints.source} is damaged: its random states cannot be restored "
                f"({one_line(exc)}); delete it to start over"
            ) from None
        record()  # the history so far (a scheduler may have removed the file with the failed job's outputs)
        log.info(
            "resuming from %s: epoch %d, batch %d of %d (step %d)",
            checkpoints.source,
            epoch,
            batch,
            steps_per_epoch,
            step,
        )
    elif eval_at_init:
        test_terms = evaluate(model, test_data, cfg.batch_size, dev, eval_seed)
        record({"epoch": 0, "step": 0, **{f"test_{k}": v for k, v in test_terms.items()}})
        log.info(
            "epoch 0 (untrained): test MSE %.5f on %d %s test images", test_terms["mse"], len(test_data), source.label
        )
    else:
        record()  # the header: history.tsv exists from the start (a declared output, even for 0 epochs)

    def save(epoch_data_rng: torch.Tensor) -> None:
        """The whole training state, positioned before batch ``batch`` of epoch ``epoch``."""
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # a finite loss, infinite gradients
            raise TrainingDivergedError(
                f"non-finite weights after epoch {epoch}, batch {batch}, step {step}; "
                f"{checkpoints.describe_last()}{RERUN_HINT}"
            )
        save_checkpoint(
            checkpoints.path,
            model,
            optimizer=optimizer,
            epoch=epoch - 1,
            step=step,
            train_config=resolved,
            training_state={
                "epoch": epoch,
                "batch": batch,
                "epoch_data_rng": epoch_data_rng,
                "rng": _rng_states(model_gen, dev),
                **partial,
                "history": history,
            },
        )
        checkpoints.saved(f"epoch {epoch}, batch {batch}, step {step}")

    def stop_if_asked(signals: _StopSignals) -> None:
        if signals.received is not None:
            name = signal.Signals(signals.received).name
            raise TrainingInterrupted(
                f"training stopped by {name} at {checkpoints.last}; state saved in "
                f"{checkpoints.path}: run the same command again to continue",
                signals.received,
            )

    model.train()
    with _StopSignals() as signals:
        while epoch <= cfg.epochs:
            schedule = model.start_epoch(epoch - 1, cfg.epochs)
            if schedule:
                log.info("epoch %d schedule: %s", epoch, schedule)
            epoch_data_rng = data_gen.get_state()
            batches = iterate_batches(
                train_data.images, cfg.batch_size, shuffle=True, generator=data_gen, hflip=cfg.hflip, device=dev
            )
            for _ in range(batch):  # a resumed epoch: the same order and flips, its finished batches skipped
                next(batches)
            bar = tqdm(
                batches,
                total=steps_per_epoch,
                initial=batch,
                desc=f"epoch {epoch}/{cfg.epochs}",
                disable=not progress,
                unit="batch",
                dynamic_ncols=True,
            )
            sums = partial["epoch_sums"]
            start = time.perf_counter() - partial["epoch_seconds"]
            for images in bar:
                try:
                    out, terms = train_step(model, optimizer, images, model_gen)
                except RateOutOfRangeError as exc:  # NaN weights reach the sampler before the loss
                    raise TrainingDivergedError(
                        f"diverged at epoch {epoch}, step {step + 1}: {exc}; {checkpoints.describe_last()}{RERUN_HINT}"
                    ) from None
                except _NonFiniteLoss as exc:
                    raise TrainingDivergedError(
                        f"non-finite loss at epoch {epoch}, step {step + 1}: "
                        + ", ".join(f"{k}={v.item():.4g}" for k, v in exc.terms.items())
                        + f"; {checkpoints.describe_last()}{RERUN_HINT}"
                    ) from exc
                step += 1
                batch += 1
                b = images.shape[0]
                for key, value in {**terms, **model.batch_stats(out)}.items():
                    sums[key] = sums.get(key, 0.0) + value.item() * b
                partial["epoch_seen"] += b
                partial["epoch_seconds"] = time.perf_counter() - start
                bar.set_postfix(loss=f"{terms['loss'].item():.4f}", mse=f"{terms['mse'].item():.4f}")
                if signals.received is not None or (batch < steps_per_epoch and checkpoints.due(step)):
                    save(epoch_data_rng)
                    stop_if_asked(signals)
            bar.close()
            seconds, seen = time.perf_counter() - start, partial["epoch_seen"]
            test_terms = evaluate(model, test_data, cfg.batch_size, dev, eval_seed)
            row = {
                "epoch": epoch,
                "step": step,
                **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
                **{f"test_{k}": v for k, v in test_terms.items()},
                "train_images_per_s": seen / seconds,
                "epoch_seconds": seconds,
            }
            record(row)
            log.info(
                "epoch %d: train loss %.5f (MSE %.5f), test MSE %.5f on %d %s test images, %.1f train images/s",
                epoch,
                row["train_loss"],
                row["train_mse"],
                test_terms["mse"],
                len(test_data),
                source.label,
                row["train_images_per_s"],
            )
            epoch, batch = epoch + 1, 0
            partial = {"epoch_sums": {}, "epoch_seen": 0, "epoch_seconds": 0.0}
            save(data_gen.get_state())
            if epoch <= cfg.epochs:  # after the last epoch only the result files remain: write them
                stop_if_asked(signals)
        if checkpoints.last is None:  # zero epochs: the untrained model is the result
            save(data_gen.get_state())

    final = (
        history[-1]
        if history and "test_mse" in history[-1]
        else {**{f"test_{k}": v for k, v in evaluate(model, test_data, cfg.batch_size, dev, eval_seed).items()}}
    )
    # Reference point: predicting the mean training image for every test image.
    mean_image = to_model_range(train_data.images).mean(0, keepdim=True)
    baseline_mse = to_model_range(test_data.images).sub_(mean_image).pow_(2).flatten(1).mean(1).mean().item()
    metrics = {
        "model": model_name,
        "dataset": source.name,
        "data_label": source.label,
        "reconstruction_mse": {
            "value": final["test_mse"],
            "n": len(test_data),
            "split": test_label,
            "averaging": "mean over images of the per-image pixel MSE, images in [-1, 1]",
            "latent": f"{model.latent_description} (eval-mode batch norm, generator seed {eval_seed})",
        },
        "baseline_mean_image_mse": {
            "value": baseline_mse,
            "n": len(test_data),
            "what": f"MSE of the mean of the {len(train_data)} training images, used as every reconstruction",
        },
        "timesteps": model.config.timesteps,
        "epochs": cfg.epochs,
        "train_images": len(train_data),
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "steps": int(history[-1].get("step", 0)) if history else 0,
        # training time only (the per-epoch sums of history.tsv; test evaluations excluded), resumes included
        "train_seconds": float(
            sum(v for r in history if isinstance(v := r.get("epoch_seconds"), (int, float)) and math.isfinite(v))
        ),
        "lr": cfg.lr,
        "lr_rule": cfg.lr_rule,
        "parameters": count_parameters(model),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "code_version": code_version(),
    }
    write_result(out_dir / "metrics.json", "train", metrics)
    save_image_grids(model, test_data, out_dir, dev, eval_seed)
    # Last: the final state becomes checkpoint.pt (a rename), so a folder with checkpoint.pt is complete
    # and one with resume.pt is not; running the command again on a finished folder only redoes the files
    # (Checkpointing.load reads checkpoint.pt when there is no resume.pt).
    if checkpoints.path.exists():  # absent when a finished folder was only redone
        os.replace(checkpoints.path, out_dir / "checkpoint.pt")
    log.info(
        "done: test reconstruction MSE %.5f (N=%d, split %s, %s; the mean training image scores %.5f); files in %s",
        final["test_mse"],
        len(test_data),
        metrics["reconstruction_mse"]["split"],
        source.label,
        baseline_mse,
        out_dir,
    )
    return TrainResult(out_dir, history, metrics)
