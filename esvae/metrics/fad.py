"""FAD, the Frechet Autoencoder Distance of the FSVAE paper (experiments.md section 2).

A deterministic ANN autoencoder per dataset, trained on its training split with MSE and AdamW
(lr 1e-3): the conv stack of :mod:`esvae.models.ann_blocks`, a linear layer to the code (64-d for
MNIST/Fashion, 128-d for CIFAR-10/CelebA) and the mirrored decoder. FAD is the Frechet distance
between the codes of generated images (in [-1, 1], native resolution) and the codes of the test
split, whose statistics are computed once when the autoencoder is trained and stored with it.

``python -m esvae train-fad-autoencoder --dataset D --out DIR`` writes ``DIR/fad_autoencoder.pt``
(weights, configuration, training record and the test-split code statistics), ``metrics.json`` and
``train.log``.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import code_version
from ..files import atomic_torch_save
from ..config import dataset_spec, hidden_dims_for
from ..errors import CheckpointError, ConfigError
from ..models.ann_blocks import ann_decoder, ann_encoder, ann_final_layer
from .frechet import GaussianStats, frechet_distance

log = logging.getLogger(__name__)

FORMAT = "esvae-fad-autoencoder"
FILE = "fad_autoencoder.pt"


def fad_code_dim(model_dataset: str) -> int:
    """64 for MNIST-like datasets, 128 otherwise."""
    return 64 if dataset_spec(model_dataset).in_channels == 1 else 128


class FADAutoencoder(nn.Module):
    def __init__(self, in_channels: int, image_size: int, code_dim: int):
        super().__init__()
        dims = hidden_dims_for(image_size)
        self.in_channels, self.image_size, self.code_dim = in_channels, image_size, code_dim
        self.bottom_channels = dims[-1]
        self.encoder = ann_encoder(in_channels, dims)
        self.to_code = nn.Linear(dims[-1] * 4, code_dim)
        self.from_code = nn.Linear(code_dim, dims[-1] * 4)
        self.decoder = ann_decoder(dims)
        self.final_layer = ann_final_layer(dims, in_channels)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, S, S)`` in [-1, 1] -> codes ``(N, code_dim)``."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"the FAD autoencoder takes images (N, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}), got {tuple(images.shape)}")
        return self.to_code(self.encoder(images).flatten(1))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.decoder(self.from_code(codes).unflatten(1, (self.bottom_channels, 2, 2))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))


@torch.no_grad()
def encode_all(model: FADAutoencoder, images: torch.Tensor, batch_size: int = 500,
               device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Codes ``(N, D)`` of model-range images (float in [-1, 1]) or uint8 images, in eval mode."""
    from ..data import to_model_range
    was_training = model.training
    model.eval()
    codes = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size]
        batch = to_model_range(batch) if batch.dtype == torch.uint8 else batch
        codes.append(model.encode(batch.to(device)).cpu())
    model.train(was_training)
    return torch.cat(codes)


def train_fad_autoencoder(dataset: str, out_dir: os.PathLike, *, epochs: int = 20, batch_size: int = 128,
                          lr: float = 1e-3, train_subset: int = 0, test_subset: int = 0, seed: int = 0, data_root=None,
                          download: bool = False, device: str = "auto", progress: Optional[bool] = None) -> Dict:
    """Train the dataset's FAD autoencoder and store it with the test split's code statistics."""
    import sys

    from tqdm import tqdm

    from ..data import data_source, first_n, iterate_batches, load_split, seeded_subset
    from ..files import write_json
    from ..train import log_to_file, resolve_device

    source = data_source(dataset)
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}")
    dev = resolve_device(device)
    train = seeded_subset(load_split(source.name, "train", data_root, download), train_subset)
    # test_subset is for quick checks; FAD's reference is then test[:N], and says so
    test, test_split = first_n(load_split(source.name, "test", data_root, download), test_subset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty() if progress is None else progress
    with log_to_file(out_dir, "train.log"):
        spec = dataset_spec(source.model_dataset)
        torch.manual_seed(seed)
        model = FADAutoencoder(spec.in_channels, spec.image_size, fad_code_dim(source.model_dataset)).to(dev)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)

        def test_mse() -> float:
            model.eval()
            total = 0.0
            with torch.no_grad():
                for batch in iterate_batches(test.images, 500, shuffle=False, device=dev):
                    total += F.mse_loss(model(batch), batch, reduction="none").flatten(1).mean(1).sum().item()
            model.train()
            return total / len(test)

        history = [{"epoch": 0, "test_mse": test_mse()}]
        log.info("FAD autoencoder for %s: code %d-d, %d train images, %d epochs, batch %d, AdamW lr %g; "
                 "untrained test MSE %.5f", source.label, model.code_dim, len(train), epochs, batch_size, lr,
                 history[0]["test_mse"])
        steps = math.ceil(len(train) / batch_size)
        for epoch in range(1, epochs + 1):
            start, total, seen = time.perf_counter(), 0.0, 0
            for batch in tqdm(iterate_batches(train.images, batch_size, shuffle=True, generator=gen, device=dev),
                              total=steps, desc=f"FAD AE epoch {epoch}/{epochs}", disable=not progress, unit="batch"):
                loss = F.mse_loss(model(batch), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * batch.shape[0]
                seen += batch.shape[0]
            history.append({"epoch": epoch, "train_mse": total / seen, "test_mse": test_mse(),
                            "seconds": time.perf_counter() - start})
            log.info("epoch %d: train MSE %.5f, test MSE %.5f (%.1f s)", epoch, history[-1]["train_mse"],
                     history[-1]["test_mse"], history[-1]["seconds"])
        stats = GaussianStats.of(encode_all(model, test.images, device=dev))
        record = {
            "format": FORMAT, "dataset": source.name, "data_label": source.label, "model_dataset": source.model_dataset,
            "in_channels": model.in_channels, "image_size": model.image_size, "code_dim": model.code_dim,
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "training": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": "AdamW", "seed": seed,
                         "train_images": len(train), "history": history},
            "test_stats": {"mean": stats.mean, "cov": stats.cov, "n": stats.n, "split": test_split},
            "code_version": code_version(),
        }
        atomic_torch_save(record, out_dir / FILE)
        summary = {k: v for k, v in record.items() if k not in ("state_dict", "test_stats")}
        summary["test_stats"] = {"n": stats.n, "split": test_split}
        write_json(out_dir / "metrics.json", summary)
        log.info("saved %s (test-split code statistics over %d images)", out_dir / FILE, stats.n)
        return summary


def load_fad_autoencoder(path: os.PathLike, map_location="cpu"):
    """``(model in eval mode, record)`` from a file or a folder holding ``fad_autoencoder.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        raise CheckpointError(f"FAD autoencoder not found: {path} (train one with 'python -m esvae "
                              "train-fad-autoencoder --dataset D --out DIR')")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read FAD autoencoder {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a FAD autoencoder file (no 'format': '{FORMAT}')")
    model = FADAutoencoder(record["in_channels"], record["image_size"], record["code_dim"])
    model.load_state_dict(record["state_dict"])
    record["path"] = str(path)
    return model.eval(), record


def fad(model: FADAutoencoder, record: Dict, generated: torch.Tensor, device=torch.device("cpu")) -> float:
    """Frechet distance between the codes of ``generated`` images and the stored test statistics."""
    stats = record["test_stats"]
    reference = GaussianStats(stats["mean"].double(), stats["cov"].double(), int(stats["n"]))
    return frechet_distance(GaussianStats.of(encode_all(model.to(device), generated, device=device)), reference)
