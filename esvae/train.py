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
  (a generative model's; the FAD autoencoder, trained by this loop too, has none)
* ``config.json`` and ``train.log``
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from . import runtime
from .checkpoints import code_version, one_line, save_checkpoint
from .config import TrainConfig
from .data import (
    DataSource,
    ImageSplit,
    data_source,
    first_n,
    iterate_batches,
    load_split,
    seeded_subset,
    to_model_range,
)
from .device import resolve_device
from .errors import CheckpointError, ConfigError, TrainingDivergedError, TrainingInterrupted
from .files import atomic_path, remove_stale_temporaries
from .history import History, history_columns
from .logs import log_to_file
from .models.base import VAEModel
from .models.registry import build_model, count_parameters
from .results import write_result
from .resume import RESUME_FILE, Checkpointing, StopSignals, only_trainer, rng_states, set_rng_states
from .runtime import cpu_name
from .samplers import RateOutOfRangeError

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_003  # eval/sample generators are seeded apart from the training stream
RERUN_HINT = (
    " (the same command resumes there and, with the same seed, diverges again: change the settings and "
    "use another --out)"
)


class _NonFiniteLoss(Exception):
    def __init__(self, terms: Dict[str, torch.Tensor]):
        super().__init__("non-finite loss")
        self.terms = terms


def train_step(model, optimizer, images: torch.Tensor, generator: Optional[torch.Generator]):
    """One optimisation step exactly as ``esvae train`` runs it (also timed by ``esvae_bench``):
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
        if model.generative:
            samples = model.sample(64, generator=gen)
            with atomic_path(out_dir / "samples.png") as tmp:
                save_image((samples + 1) / 2, tmp, nrow=8, padding=2, pad_value=1.0)
    model.train(was_training)


@dataclass
class TrainResult:
    out_dir: Path
    history: List[Dict[str, float]]
    metrics: Dict


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

    resolve_config(model_name, source.setting, **(model_overrides or {}))
    train_data = seeded_subset(load_split(source.name, "train", data_root, download), cfg.train_subset)
    test_full = load_split(source.name, "test", data_root, download)
    test_data, test_label = first_n(test_full, cfg.test_subset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with only_trainer(out_dir), log_to_file(out_dir):
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
            Checkpointing(out_dir / RESUME_FILE, checkpoint_every, checkpoint_minutes),
        )


@dataclass
class TrainingState:
    """Where training is: the position, and the running sums of the epoch in progress (what a
    resume state holds besides the weights, the optimiser, the random states and the history)."""

    epoch: int = 1  # the epoch in progress, from 1
    batch: int = 0  # its batches done
    step: int = 0  # optimiser steps done in all
    epoch_sums: Dict[str, float] = field(default_factory=dict)  # loss terms and statistics x images
    epoch_seen: int = 0  # training images of the epoch so far
    epoch_seconds: float = 0.0  # training time of the epoch so far

    RUNNING = ("epoch_sums", "epoch_seen", "epoch_seconds")  # the epoch's running sums, saved as they are

    @classmethod
    def saved(cls, state: Dict[str, Any]) -> "TrainingState":
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls)})

    def running(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self.RUNNING}

    def next_epoch(self) -> None:
        self.epoch, self.batch = self.epoch + 1, 0
        self.epoch_sums, self.epoch_seen, self.epoch_seconds = {}, 0, 0.0


@dataclass
class _Run:
    """What the loop works with and does not replace: the model and optimiser, the data, the
    resolved settings, the random streams, the history file and where the state is saved."""

    model_name: str
    source: DataSource
    out_dir: Path
    cfg: TrainConfig
    train_data: ImageSplit
    test_data: ImageSplit
    test_label: str
    dev: torch.device
    progress: bool
    checkpoints: Checkpointing
    model: VAEModel
    optimizer: torch.optim.Optimizer
    resolved: Dict[str, Any]
    history: History
    data_gen: torch.Generator  # the data order and flips
    model_gen: torch.Generator  # the model's sampling

    @property
    def steps_per_epoch(self) -> int:
        return self.resolved["steps_per_epoch"]

    @property
    def eval_seed(self) -> int:
        return self.cfg.seed + EVAL_SEED_OFFSET

    def test_terms(self) -> Dict[str, float]:
        return evaluate(self.model, self.test_data, self.cfg.batch_size, self.dev, self.eval_seed)


def _train(
    model_name: str,
    source: DataSource,
    out_dir: Path,
    cfg: TrainConfig,
    overrides: Dict[str, Any],
    train_data: ImageSplit,
    test_data: ImageSplit,
    test_label: str,
    dev: torch.device,
    eval_at_init: bool,
    progress: bool,
    checkpoints: Checkpointing,
) -> TrainResult:
    torch.manual_seed(cfg.seed)
    model = build_model(model_name, source.setting, **overrides).to(dev)
    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    derived = model.configure_training(steps_per_epoch=steps_per_epoch)  # e.g. the ANN VAE's KLD weight
    groups = model.param_groups(cfg.lr, cfg.prior_lr_multiplier)
    beta1, beta2 = cfg.betas
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(beta1, beta2), weight_decay=cfg.weight_decay)
    resolved = _resolved_settings(
        model_name, source, model, cfg, len(train_data), len(test_data), dev, derived, eval_at_init, groups, checkpoints
    )
    removed = remove_stale_temporaries(out_dir)
    if removed:
        log.info("removed %d temporary file(s) left in %s by an interrupted write", removed, out_dir)
    saved = checkpoints.load(resolved, model, optimizer)
    write_result(out_dir / "config.json", "config", resolved)
    _log_settings(model_name, source, model, cfg, groups, derived, train_data, test_data, dev, steps_per_epoch)
    run = _Run(
        model_name=model_name,
        source=source,
        out_dir=out_dir,
        cfg=cfg,
        train_data=train_data,
        test_data=test_data,
        test_label=test_label,
        dev=dev,
        progress=progress,
        checkpoints=checkpoints,
        model=model,
        optimizer=optimizer,
        resolved=resolved,
        history=History(out_dir / "history.tsv", history_columns(model)),
        data_gen=torch.Generator().manual_seed(cfg.seed),
        model_gen=torch.Generator(device=dev).manual_seed(cfg.seed + 1),
    )
    state = _resume(run, saved) if saved is not None else _start(run, eval_at_init)
    model.train()
    with StopSignals() as signals:
        while state.epoch <= cfg.epochs:
            _run_epoch(run, state, signals)
        if checkpoints.last is None:  # zero epochs: the untrained model is the result
            _save(run, state, run.data_gen.get_state())
    return _finish(run)


def _resolved_settings(
    model_name, source, model, cfg, n_train, n_test, dev, derived, eval_at_init, groups, checkpoints
) -> Dict[str, Any]:
    """``config.json`` (schema ``config``), in its order: what defines the run (see
    :data:`esvae.resume.RUN_DEFINING_KEYS`), where it runs, and how it was set up."""
    return {
        "model": model_name,
        "dataset": source.name,
        "data_label": source.label,
        "model_setting": source.setting,
        "model_config": model.config.to_dict(),
        "train_config": cfg.to_dict(),
        "device": str(dev),
        "device_type": dev.type,
        "torch_threads": torch.get_num_threads(),
        "allocator_tuned": runtime.ALLOCATOR_TUNED,
        "parameters": count_parameters(model),
        "train_images": n_train,
        "test_images": n_test,
        "steps_per_epoch": math.ceil(n_train / cfg.batch_size),
        "derived": derived,
        "eval_at_init": eval_at_init,
        "learning_rates": {g["name"]: g["lr"] for g in groups},
        "checkpoint_every": {"steps": checkpoints.every_steps, "minutes": checkpoints.every_minutes},
        "code_version": code_version(),
        "torch_version": str(torch.__version__),
    }


def _log_settings(model_name, source, model, cfg, groups, derived, train_data, test_data, dev, steps_per_epoch) -> None:
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


def _resume(run: _Run, saved: Dict[str, Any]) -> TrainingState:
    """The state a resume file holds: position, running sums, history and every random stream."""
    state = TrainingState.saved(saved)
    run.history.rows.extend(saved["history"])
    run.data_gen.set_state(saved["epoch_data_rng"])
    try:
        set_rng_states(saved["rng"], run.model_gen, run.dev)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{run.checkpoints.source} is damaged: its random states cannot be restored "
            f"({one_line(exc)}); delete it to start over"
        ) from None
    run.history.record()  # the history so far (a scheduler may have removed the file with the failed job's outputs)
    log.info(
        "resuming from %s: epoch %d, batch %d of %d (step %d)",
        run.checkpoints.source,
        state.epoch,
        state.batch,
        run.steps_per_epoch,
        state.step,
    )
    return state


def _start(run: _Run, eval_at_init: bool) -> TrainingState:
    """A fresh run: epoch 0 of the history is the untrained model on the test split (or just the
    header: history.tsv exists from the start, a declared output even for 0 epochs)."""
    if eval_at_init:
        test_terms = run.test_terms()
        run.history.record({"epoch": 0, "step": 0, **{f"test_{k}": v for k, v in test_terms.items()}})
        log.info(
            "epoch 0 (untrained): test MSE %.5f on %d %s test images",
            test_terms["mse"],
            len(run.test_data),
            run.source.label,
        )
    else:
        run.history.record()
    return TrainingState()


def _save(run: _Run, state: TrainingState, epoch_data_rng: torch.Tensor) -> None:
    """The whole training state, positioned before batch ``state.batch`` of epoch ``state.epoch``."""
    where = f"epoch {state.epoch}, batch {state.batch}, step {state.step}"
    if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters()):  # a finite loss, infinite gradients
        raise TrainingDivergedError(f"non-finite weights after {where}; {run.checkpoints.describe_last()}{RERUN_HINT}")
    save_checkpoint(
        run.checkpoints.path,
        run.model,
        optimizer=run.optimizer,
        epoch=state.epoch - 1,
        step=state.step,
        run_config=run.resolved,
        training_state={
            "epoch": state.epoch,
            "batch": state.batch,
            "epoch_data_rng": epoch_data_rng,
            "rng": rng_states(run.model_gen, run.dev),
            **state.running(),
            "history": run.history.rows,
        },
    )
    run.checkpoints.saved(where)


def _stop_if_asked(run: _Run, signals: StopSignals) -> None:
    if signals.received is not None:
        name = signal.Signals(signals.received).name
        raise TrainingInterrupted(
            f"training stopped by {name} at {run.checkpoints.last}; state saved in "
            f"{run.checkpoints.path}: run the same command again to continue",
            signals.received,
        )


def _run_epoch(run: _Run, state: TrainingState, signals: StopSignals) -> None:
    """Epoch ``state.epoch`` from batch ``state.batch`` on (a resumed epoch re-draws the same order
    and flips and skips its finished batches), then its test evaluation, history row and save."""
    from tqdm import tqdm

    cfg, model = run.cfg, run.model
    schedule = model.start_epoch(state.epoch - 1, cfg.epochs)
    if schedule:
        log.info("epoch %d schedule: %s", state.epoch, schedule)
    epoch_data_rng = run.data_gen.get_state()
    batches = iterate_batches(
        run.train_data.images, cfg.batch_size, shuffle=True, generator=run.data_gen, hflip=cfg.hflip, device=run.dev
    )
    for _ in range(state.batch):
        next(batches)
    bar = tqdm(
        batches,
        total=run.steps_per_epoch,
        initial=state.batch,
        desc=f"epoch {state.epoch}/{cfg.epochs}",
        disable=not run.progress,
        unit="batch",
        dynamic_ncols=True,
    )
    start = time.perf_counter() - state.epoch_seconds
    for images in bar:
        terms = _step(run, state, images)
        state.epoch_seconds = time.perf_counter() - start
        bar.set_postfix(loss=f"{terms['loss'].item():.4f}", mse=f"{terms['mse'].item():.4f}")
        if signals.received is not None or (state.batch < run.steps_per_epoch and run.checkpoints.due(state.step)):
            _save(run, state, epoch_data_rng)
            _stop_if_asked(run, signals)
    bar.close()
    _end_epoch(run, state, time.perf_counter() - start)
    _save(run, state, run.data_gen.get_state())
    if state.epoch <= cfg.epochs:  # after the last epoch only the result files remain: write them
        _stop_if_asked(run, signals)


def _step(run: _Run, state: TrainingState, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One optimiser step (:func:`train_step`), its terms added to the epoch's sums; a diverged
    step is one error naming the position and the last good checkpoint."""
    try:
        out, terms = train_step(run.model, run.optimizer, images, run.model_gen)
    except RateOutOfRangeError as exc:  # NaN weights reach the sampler before the loss
        raise TrainingDivergedError(
            f"diverged at epoch {state.epoch}, step {state.step + 1}: {exc}; "
            f"{run.checkpoints.describe_last()}{RERUN_HINT}"
        ) from None
    except _NonFiniteLoss as exc:
        raise TrainingDivergedError(
            f"non-finite loss at epoch {state.epoch}, step {state.step + 1}: "
            + ", ".join(f"{k}={v.item():.4g}" for k, v in exc.terms.items())
            + f"; {run.checkpoints.describe_last()}{RERUN_HINT}"
        ) from exc
    state.step += 1
    state.batch += 1
    b = images.shape[0]
    for key, value in {**terms, **run.model.batch_stats(out)}.items():
        state.epoch_sums[key] = state.epoch_sums.get(key, 0.0) + value.item() * b
    state.epoch_seen += b
    return terms


def _end_epoch(run: _Run, state: TrainingState, seconds: float) -> None:
    """The epoch's history row (training means, test evaluation, speed), then on to the next."""
    seen = state.epoch_seen
    test_terms = run.test_terms()
    row = {
        "epoch": state.epoch,
        "step": state.step,
        **{f"train_{k}": v / max(seen, 1) for k, v in state.epoch_sums.items()},
        **{f"test_{k}": v for k, v in test_terms.items()},
        "train_images_per_s": seen / seconds,
        "epoch_seconds": seconds,
    }
    run.history.record(row)
    log.info(
        "epoch %d: train loss %.5f (MSE %.5f), test MSE %.5f on %d %s test images, %.1f train images/s",
        state.epoch,
        row["train_loss"],
        row["train_mse"],
        test_terms["mse"],
        len(run.test_data),
        run.source.label,
        row["train_images_per_s"],
    )
    state.next_epoch()


def _finish(run: _Run) -> TrainResult:
    """The result files (``metrics.json``, the image grids), then ``resume.pt`` becomes
    ``checkpoint.pt`` (a rename, last: a folder with checkpoint.pt is complete and one with
    resume.pt is not; the command run again on a finished folder only redoes the files, since
    Checkpointing.load reads checkpoint.pt when there is no resume.pt)."""
    rows = run.history.rows
    final = rows[-1] if rows and "test_mse" in rows[-1] else {f"test_{k}": v for k, v in run.test_terms().items()}
    # Reference point: predicting the mean training image for every test image.
    mean_image = to_model_range(run.train_data.images).mean(0, keepdim=True)
    baseline_mse = to_model_range(run.test_data.images).sub_(mean_image).pow_(2).flatten(1).mean(1).mean().item()
    metrics = _final_metrics(run, final["test_mse"], baseline_mse)
    write_result(run.out_dir / "metrics.json", "train", metrics)
    save_image_grids(run.model, run.test_data, run.out_dir, run.dev, run.eval_seed)
    if run.checkpoints.path.exists():  # absent when a finished folder was only redone
        os.replace(run.checkpoints.path, run.out_dir / "checkpoint.pt")
    log.info(
        "done: test reconstruction MSE %.5f (N=%d, split %s, %s; the mean training image scores %.5f); files in %s",
        final["test_mse"],
        len(run.test_data),
        run.test_label,
        run.source.label,
        baseline_mse,
        run.out_dir,
    )
    return TrainResult(run.out_dir, rows, metrics)


def _final_metrics(run: _Run, test_mse: float, baseline_mse: float) -> Dict[str, Any]:
    """``metrics.json`` (schema ``train`` in :mod:`esvae.results`)."""
    cfg, model, rows, n = run.cfg, run.model, run.history.rows, len(run.test_data)
    return {
        "model": run.model_name,
        "dataset": run.source.name,
        "data_label": run.source.label,
        "reconstruction_mse": {
            "value": test_mse,
            "n": n,
            "split": run.test_label,
            "averaging": "mean over images of the per-image pixel MSE, images in [-1, 1]",
            "latent": f"{model.latent_description} (eval-mode batch norm, generator seed {run.eval_seed})",
        },
        "baseline_mean_image_mse": {
            "value": baseline_mse,
            "n": n,
            "what": f"MSE of the mean of the {len(run.train_data)} training images, used as every reconstruction",
        },
        "timesteps": model.config.timesteps,
        "epochs": cfg.epochs,
        "train_images": len(run.train_data),
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "steps": int(rows[-1].get("step", 0)) if rows else 0,
        # training time only (the per-epoch sums of history.tsv; test evaluations excluded), resumes included
        "train_seconds": float(
            sum(v for r in rows if isinstance(v := r.get("epoch_seconds"), (int, float)) and math.isfinite(v))
        ),
        "lr": cfg.lr,
        "lr_rule": cfg.lr_rule,
        "parameters": count_parameters(model),
        "device": str(run.dev),
        "device_name": torch.cuda.get_device_name(run.dev) if run.dev.type == "cuda" else cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "code_version": code_version(),
    }
