"""Training loop: AdamW at the paper's effective LR, per-epoch test evaluation, files in ``out_dir``.

Files written in ``out_dir`` (each atomically, so a killed job leaves the previous version):

* ``checkpoint.pt`` -- weights, optimiser, epoch, step, resolved configs, code version (every epoch)
* ``history.tsv``   -- one row per epoch (epoch 0 = the untrained model on the test split)
* ``metrics.json``  -- the final test reconstruction MSE with N, split and conditions
* ``reconstructions.png`` (rows alternate: test inputs, their reconstructions) and ``samples.png``
* ``config.json`` and ``train.log``
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import runtime
from .checkpoints import code_version, save_checkpoint
from .config import TrainConfig
from .data import ImageSplit, data_source, first_n, iterate_batches, load_split, seeded_subset, to_model_range
from .errors import ConfigError, TrainingDivergedError
from .models.registry import build_model, count_parameters
from .samplers import RateOutOfRangeError

log = logging.getLogger(__name__)



def history_columns(model) -> List[str]:
    """``history.tsv`` columns: the model's loss terms and statistics, for train and test."""
    names = list(model.loss_terms) + list(model.stat_names)
    return (["epoch", "step"] + [f"train_{k}" for k in names] + [f"test_{k}" for k in names]
            + ["train_images_per_s", "epoch_seconds"])

EVAL_SEED_OFFSET = 1_000_003   # eval/sample generators are seeded apart from the training stream


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


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


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


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


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
            rows += [inputs[start:start + 8], recon[start:start + 8]]
        save_image((torch.cat(rows) + 1) / 2, out_dir / "reconstructions.png", nrow=8, padding=2, pad_value=1.0)
        samples = model.sample(64, generator=gen)
        save_image((samples + 1) / 2, out_dir / "samples.png", nrow=8, padding=2, pad_value=1.0)
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


def train(*, model_name: str, dataset: str, out_dir: os.PathLike, train_config: TrainConfig,
          model_overrides: Optional[Dict] = None, data_root: Optional[os.PathLike] = None, download: bool = False,
          device: str = "auto", eval_at_init: bool = True, progress: Optional[bool] = None) -> TrainResult:
    """Train ``model_name`` on ``dataset`` (a data name, e.g. "fashion" or "mnist5k"); see module doc."""
    source = data_source(dataset)
    dev = resolve_device(device)
    cfg = train_config
    if cfg.epochs < 0 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise ConfigError(f"need epochs >= 0, batch_size >= 1 and lr > 0; got {cfg.epochs}, {cfg.batch_size}, {cfg.lr}")
    # Names and data first: a wrong model key or a missing dataset leaves no output folder behind.
    from .models.registry import resolve_config
    resolve_config(model_name, source.model_dataset, **(model_overrides or {}))
    train_data = seeded_subset(load_split(source.name, "train", data_root, download), cfg.train_subset)
    test_full = load_split(source.name, "test", data_root, download)
    test_data, test_label = first_n(test_full, cfg.test_subset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(out_dir):
        return _train(model_name, source, out_dir, cfg, model_overrides or {}, train_data, test_data, test_label,
                      dev, eval_at_init, sys.stderr.isatty() if progress is None else progress)


def _train(model_name, source, out_dir, cfg, overrides, train_data, test_data, test_label, dev, eval_at_init,
           progress):
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    model = build_model(model_name, source.model_dataset, **overrides).to(dev)

    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    derived = model.configure_training(steps_per_epoch=steps_per_epoch)  # e.g. the ANN VAE's KLD weight
    groups = model.param_groups(cfg.lr, cfg.prior_lr_multiplier)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    resolved = {
        "model": model_name, "dataset": source.name, "data_label": source.label,
        "model_config_dataset": source.model_dataset, "model_config": model.config.to_dict(),
        "train_config": cfg.to_dict(), "device": str(dev), "torch_threads": torch.get_num_threads(),
        "allocator_tuned": runtime.ALLOCATOR_TUNED,
        "parameters": count_parameters(model), "train_images": len(train_data), "test_images": len(test_data),
        "steps_per_epoch": steps_per_epoch, "derived": derived,
        "learning_rates": {g["name"]: g["lr"] for g in groups},
        "code_version": code_version(), "torch_version": str(torch.__version__),
    }
    write_json(out_dir / "config.json", resolved)
    log.info("training %s on %s: %d train / %d test images, T=%d, batch %d, %d steps/epoch, device %s",
             model_name, source.label, len(train_data), len(test_data), model.config.timesteps, cfg.batch_size,
             steps_per_epoch, dev)
    log.info("effective LR %g (%s); parameter-group LRs %s; AdamW betas %s, weight decay %g",
             cfg.lr, cfg.lr_derivation or "given on the command line", {g["name"]: g["lr"] for g in groups},
             tuple(cfg.betas), cfg.weight_decay)
    if derived:
        log.info("derived from the data: %s", derived)

    history: List[Dict[str, float]] = []
    eval_seed = cfg.seed + EVAL_SEED_OFFSET

    columns = history_columns(model)

    def record(row: Dict[str, float]) -> None:
        history.append(row)
        lines = ["\t".join(columns)]
        for r in history:
            lines.append("\t".join("" if r.get(c) is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]))
                                   for c in columns))
        write_text_atomic(out_dir / "history.tsv", "\n".join(lines) + "\n")

    if eval_at_init:
        test_terms = evaluate(model, test_data, cfg.batch_size, dev, eval_seed)
        record({"epoch": 0, "step": 0, **{f"test_{k}": v for k, v in test_terms.items()}})
        log.info("epoch 0 (untrained): test MSE %.5f on %d %s test images", test_terms["mse"], len(test_data), source.label)

    data_gen = torch.Generator().manual_seed(cfg.seed)
    model_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    step = 0
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        schedule = model.start_epoch(epoch - 1, cfg.epochs)
        if schedule:
            log.info("epoch %d schedule: %s", epoch, schedule)
        start = time.perf_counter()
        sums: Dict[str, float] = {}
        seen = 0
        batches = iterate_batches(train_data.images, cfg.batch_size, shuffle=True, generator=data_gen, hflip=cfg.hflip,
                                  device=dev)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress,
                   unit="batch", dynamic_ncols=True)
        for images in bar:
            last = "no checkpoint yet" if epoch == 1 else f"last good checkpoint {out_dir / 'checkpoint.pt'} (epoch {epoch - 1})"
            try:
                out, terms = train_step(model, optimizer, images, model_gen)
            except RateOutOfRangeError as exc:  # NaN weights reach the sampler before the loss
                raise TrainingDivergedError(f"diverged at epoch {epoch}, step {step}: {exc}; {last}") from None
            except _NonFiniteLoss as exc:
                raise TrainingDivergedError(f"non-finite loss at epoch {epoch}, step {step}: "
                                            + ", ".join(f"{k}={v.item():.4g}" for k, v in exc.terms.items()) + f"; {last}")
            step += 1
            b = images.shape[0]
            seen += b
            for key, value in {**terms, **model.batch_stats(out)}.items():
                sums[key] = sums.get(key, 0.0) + value.item() * b
            bar.set_postfix(loss=f"{terms['loss'].item():.4f}", mse=f"{terms['mse'].item():.4f}")
        seconds = time.perf_counter() - start
        test_terms = evaluate(model, test_data, cfg.batch_size, dev, eval_seed)
        row = {"epoch": epoch, "step": step, **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
               **{f"test_{k}": v for k, v in test_terms.items()},
               "train_images_per_s": seen / seconds, "epoch_seconds": seconds}
        record(row)
        save_checkpoint(out_dir / "checkpoint.pt", model, optimizer=optimizer, epoch=epoch, step=step,
                        train_config=resolved)
        log.info("epoch %d: train loss %.5f (MSE %.5f), test MSE %.5f on %d %s test images, %.1f train images/s",
                 epoch, row["train_loss"], row["train_mse"], test_terms["mse"], len(test_data), source.label,
                 row["train_images_per_s"])

    if cfg.epochs == 0:
        save_checkpoint(out_dir / "checkpoint.pt", model, optimizer=optimizer, epoch=0, step=0, train_config=resolved)
    final = history[-1] if history and "test_mse" in history[-1] else {
        **{f"test_{k}": v for k, v in evaluate(model, test_data, cfg.batch_size, dev, eval_seed).items()}}
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
        "parameters": count_parameters(model),
        "device": str(dev),
        "code_version": code_version(),
    }
    write_json(out_dir / "metrics.json", metrics)
    save_image_grids(model, test_data, out_dir, dev, eval_seed)
    log.info("done: test reconstruction MSE %.5f (N=%d, split %s, %s; the mean training image scores %.5f); files in %s",
             final["test_mse"], len(test_data), metrics["reconstruction_mse"]["split"], source.label, baseline_mse, out_dir)
    return TrainResult(out_dir, history, metrics)
