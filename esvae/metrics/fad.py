"""FAD, the Frechet Autoencoder Distance of the FSVAE paper (docs/metrics.md section 2).

A deterministic ANN autoencoder per dataset, trained on its training split with MSE and AdamW
(lr 1e-3) by the project's one training loop (:func:`esvae.train.train`, model ``fad_autoencoder``,
which is registered but not one of the benchmark's models): the conv stack of
:mod:`esvae.models.ann_blocks`, a linear layer to the code (64-d for
MNIST/Fashion, 128-d for CIFAR-10/CelebA) and the mirrored decoder. FAD is the Frechet distance
between the codes of generated images (in [-1, 1], native resolution) and the codes of the test
split, whose statistics are computed once when the autoencoder is trained and stored with it.

``python -m esvae train-fad-autoencoder --dataset D --out DIR`` writes ``DIR/fad_autoencoder.pt``
(weights, configuration, training record and the test-split code statistics), ``metrics.json`` and
``train.log``; the training run itself (checkpoint, history, resume state) is ``DIR/autoencoder/``.

The published variant (``fad_published``, docs/metrics.md section 6) uses instead the FSVAE authors'
released autoencoders and test-split statistics, which make FAD values comparable with the papers'
tables: :func:`load_published_autoencoder` reads their ``state_dict`` (only the encoder and its
``latent_layer`` are used) and :func:`load_published_stats` their ``mu``/``sigma`` arrays. The user
copies those files from the authors' repositories; this project never downloads or ships them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import code_version
from ..config import TrainConfig, hidden_dims_for, paper_setting
from ..errors import CheckpointError, ConfigError
from ..files import atomic_torch_save
from ..models.ann_blocks import ann_decoder, ann_encoder, ann_final_layer
from ..models.base import VAEModel
from .frechet import GaussianStats, frechet_distance

log = logging.getLogger(__name__)

FORMAT = "esvae-fad-autoencoder"
FILE = "fad_autoencoder.pt"
TRAINING_DIR = "autoencoder"  # its training run (esvae.train): checkpoint, history, log


def fad_code_dim(setting: str) -> int:
    """64 for MNIST-like datasets, 128 otherwise."""
    return 64 if paper_setting(setting).in_channels == 1 else 128


@dataclass
class FADAutoencoderConfig:
    in_channels: int = 1
    image_size: int = 32
    code_dim: int = 64
    timesteps: int = 1  # no time axis; kept so every trained network reports T

    def validate(self) -> "FADAutoencoderConfig":
        hidden_dims_for(self.image_size)  # 32 or 64, else a ConfigError
        if self.in_channels < 1 or self.code_dim < 1 or self.timesteps != 1:
            raise ConfigError(
                f"the FAD autoencoder needs in_channels >= 1, code_dim >= 1 and timesteps 1; got "
                f"{self.in_channels}, {self.code_dim}, {self.timesteps}"
            )
        return self

    def to_dict(self) -> Dict[str, int]:
        return dataclasses.asdict(self)


def fad_autoencoder_config(setting: str) -> FADAutoencoderConfig:
    spec = paper_setting(setting)
    return FADAutoencoderConfig(spec.in_channels, spec.image_size, fad_code_dim(setting))


def fad_train_config(epochs: int = 20, batch_size: int = 128, lr: float = 1e-3, seed: int = 0) -> TrainConfig:
    """The autoencoder's training: MSE, AdamW at ``lr`` with torch's default betas and weight decay
    (0.01), one parameter group, no flips."""
    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_derivation="the FAD autoencoder's setting (AdamW, lr 1e-3 unless given)",
        prior_lr_multiplier=1.0,
        weight_decay=0.01,
        hflip=False,
        seed=seed,
    )


@dataclass
class FADAutoencoderOutput:
    reconstruction: torch.Tensor
    code: torch.Tensor


class FADAutoencoder(VAEModel):
    """Deterministic: trained by the same loop as the benchmark's models (registry name
    ``fad_autoencoder``, not one of the benchmark's), with the plain MSE as its loss."""

    generative = False  # no prior to sample from: training writes no samples.png
    spiking_latent = False

    def __init__(self, config: FADAutoencoderConfig):
        super().__init__()
        self.config = config
        dims = hidden_dims_for(config.image_size)
        self.in_channels, self.image_size, self.code_dim = config.in_channels, config.image_size, config.code_dim
        self.bottom_channels = dims[-1]
        self.encoder = ann_encoder(config.in_channels, dims)
        self.to_code = nn.Linear(dims[-1] * 4, config.code_dim)
        self.from_code = nn.Linear(config.code_dim, dims[-1] * 4)
        self.decoder = ann_decoder(dims)
        self.final_layer = ann_final_layer(dims, config.in_channels)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, S, S)`` in [-1, 1] -> codes ``(N, code_dim)``."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"the FAD autoencoder takes images (N, {self.in_channels}, {self.image_size}, "
                f"{self.image_size}), got {tuple(images.shape)}"
            )
        return self.to_code(self.encoder(images).flatten(1))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.decoder(self.from_code(codes).unflatten(1, (self.bottom_channels, 2, 2))))

    def latent_code(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.encode(images)

    def decode_code(self, code: torch.Tensor) -> torch.Tensor:
        return self.decode(code)

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> FADAutoencoderOutput:
        code = self.encode(images)
        return FADAutoencoderOutput(self.decode(code), code)

    def loss(self, images: torch.Tensor, out: FADAutoencoderOutput) -> Dict[str, torch.Tensor]:
        mse = F.mse_loss(out.reconstruction, images)
        return {"loss": mse, "mse": mse}

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        raise ConfigError("the FAD autoencoder is not generative: it has no prior to sample from")

    @property
    def latent_description(self) -> str:
        return f"deterministic {self.code_dim}-d code (no sampling)"


@torch.no_grad()
def encode_all(
    model: Union[FADAutoencoder, PublishedFADEncoder],
    images: torch.Tensor,
    batch_size: int = 500,
    device: torch.device = torch.device("cpu"),
) -> torch.Tensor:
    """Codes ``(N, D)`` of model-range images (float in [-1, 1]) or uint8 images, in eval mode, by
    ``model.encode`` (our autoencoder or the published encoder)."""
    from ..data import to_model_range

    was_training = model.training
    model.eval()
    codes = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        batch = to_model_range(batch) if batch.dtype == torch.uint8 else batch
        codes.append(model.encode(batch.to(device)).cpu())
    model.train(was_training)
    return torch.cat(codes)


def train_fad_autoencoder(
    dataset: str,
    out_dir: os.PathLike,
    *,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    train_subset: int = 0,
    test_subset: int = 0,
    seed: int = 0,
    data_root=None,
    download: bool = False,
    device: str = "auto",
    progress: Optional[bool] = None,
) -> Dict:
    """Train the dataset's FAD autoencoder with :func:`esvae.train.train` (in ``out_dir/autoencoder/``,
    so it resumes after an interruption like any training run) and store it with the test split's
    code statistics in ``out_dir/fad_autoencoder.pt``; ``out_dir/metrics.json`` summarises it."""
    from ..checkpoints import load_checkpoint
    from ..data import data_source, first_n, load_split
    from ..device import resolve_device
    from ..logs import log_to_file
    from ..results import write_result
    from ..train import train

    source = data_source(dataset)
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}")
    cfg = fad_train_config(epochs, batch_size, lr, seed)
    cfg.train_subset, cfg.test_subset = train_subset, test_subset
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(out_dir, "train.log"):
        result = train(
            model_name="fad_autoencoder",
            dataset=dataset,
            out_dir=out_dir / TRAINING_DIR,
            train_config=cfg,
            data_root=data_root,
            download=download,
            device=device,
            progress=progress,
        )
        dev = resolve_device(device)
        model = cast(FADAutoencoder, load_checkpoint(result.out_dir / "checkpoint.pt", map_location=dev)[0])
        # test_subset is for quick checks; FAD's reference is then test[:N], and says so
        test, test_split = first_n(load_split(source.name, "test", data_root, download), test_subset)
        stats = GaussianStats.of(encode_all(model, test.images, device=dev))
        record = _record(source, model, cfg, result, stats, test_split)
        atomic_torch_save(record, out_dir / FILE)
        summary = {k: v for k, v in record.items() if k not in ("state_dict", "test_stats")}
        summary["test_stats"] = {"n": stats.n, "split": test_split}
        write_result(out_dir / "metrics.json", "fad", summary)
        log.info("saved %s (test-split code statistics over %d images)", out_dir / FILE, stats.n)
        return summary


def _record(source, model: FADAutoencoder, cfg: TrainConfig, result, stats: GaussianStats, test_split: str) -> Dict:
    """What ``fad_autoencoder.pt`` holds: the weights, the training record and the test statistics."""
    return {
        "format": FORMAT,
        "dataset": source.name,
        "data_label": source.label,
        "setting": source.setting,
        "in_channels": model.in_channels,
        "image_size": model.image_size,
        "code_dim": model.code_dim,
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "training": {
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "optimizer": "AdamW",
            "seed": cfg.seed,
            "train_images": result.metrics["train_images"],
            "history": result.history,
            "run": str(result.out_dir),
        },
        "test_stats": {"mean": stats.mean, "cov": stats.cov, "n": stats.n, "split": test_split},
        "code_version": code_version(),
    }


def load_fad_autoencoder(path: os.PathLike, map_location="cpu"):
    """``(model in eval mode, record)`` from a file or a folder holding ``fad_autoencoder.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        raise CheckpointError(
            f"FAD autoencoder not found: {path} (train one with 'python -m esvae "
            "train-fad-autoencoder --dataset D --out DIR')"
        )
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read FAD autoencoder {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a FAD autoencoder file (no 'format': '{FORMAT}')")
    model = FADAutoencoder(FADAutoencoderConfig(record["in_channels"], record["image_size"], record["code_dim"]))
    model.load_state_dict(record["state_dict"])
    record["path"] = str(path)
    return model.eval(), record


def fad(model: FADAutoencoder, record: Dict, generated: torch.Tensor, device=torch.device("cpu")) -> float:
    """Frechet distance between the codes of ``generated`` images and the stored test statistics."""
    stats = record["test_stats"]
    reference = GaussianStats(stats["mean"].double(), stats["cov"].double(), int(stats["n"]))
    return frechet_distance(GaussianStats.of(encode_all(model.to(device), generated, device=device)), reference)


# --- the FSVAE authors' published autoencoders and statistics --------------------------------------

# Per model dataset: the authors' file names (in their metrics/stat_checkpoints/ and metrics/stats/).
PUBLISHED_FILES: Dict[str, Tuple[str, str]] = {
    "mnist": ("stat_checkpoints/mnist_64.pth", "stats/mnist_test_64.npz"),
    "fashion": ("stat_checkpoints/fashion_64.pth", "stats/fashion_test_64.npz"),
    "cifar10": ("stat_checkpoints/cifar10_128.pth", "stats/cifar10_test_128.npz"),
    "celeba": ("stat_checkpoints/celeba_128.pth", "stats/celeba_test_128.npz"),
}
# Keys of the authors' autoencoder that FAD does not use (its decoder half).
PUBLISHED_DECODER_PREFIXES = ("decoder_input.", "decoder.", "final_layer.")
# The authors' FAD code encodes generated images in batches of 128 and never switches the autoencoder
# to eval mode: its batch norms normalise with each batch's own statistics (their published test
# statistics were made the same way). The published variant follows that protocol.
PUBLISHED_BATCH = 128
PUBLISHED_BATCH_NORM = (
    f"batch statistics over batches of {PUBLISHED_BATCH} images (the authors' FAD code never calls "
    "eval(); their published test statistics were made the same way)"
)


class PublishedFADEncoder(nn.Module):
    """The encoder half of the FSVAE authors' FAD autoencoder, in their key layout::

        encoder.{i}   conv 3x3 s2 (keys .0.weight/.0.bias) -> BN (.1.*) -> LeakyReLU(0.01), i over the widths
        latent_layer  Linear(last width x 2 x 2 -> code_dim)

    widths [32, 64, 128, 256] (+512 for 64x64 images), code 64-d (greyscale) or 128-d (colour).
    As in the authors' code, each batch norm normalises with the statistics of the batch it is given
    (:data:`PUBLISHED_BATCH_NORM`), in eval mode too; the running statistics are loaded, never used
    or updated. So the codes of an image depend on its batch: encode in batches of
    :data:`PUBLISHED_BATCH`, as :func:`published_codes` does.
    """

    def __init__(self, in_channels: int, image_size: int, code_dim: int):
        super().__init__()
        dims = hidden_dims_for(image_size)
        self.in_channels, self.image_size, self.code_dim = in_channels, image_size, code_dim
        self.encoder = ann_encoder(in_channels, dims)
        self.latent_layer = nn.Linear(dims[-1] * 4, code_dim)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, S, S)`` in [-1, 1] -> codes ``(N, code_dim)``."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"the published FAD autoencoder takes images (N, {self.in_channels}, {self.image_size}, "
                f"{self.image_size}), got {tuple(images.shape)}"
            )
        x = images
        for block in self.encoder:
            conv, bn, activation = cast(nn.Sequential, block)
            assert isinstance(bn, nn.BatchNorm2d)
            x = activation(F.batch_norm(conv(x), None, None, bn.weight, bn.bias, training=True, eps=bn.eps))
        return self.latent_layer(x.flatten(1))

    forward = encode


@torch.no_grad()
def published_codes(
    encoder: PublishedFADEncoder, images: torch.Tensor, device: torch.device = torch.device("cpu")
) -> torch.Tensor:
    """Codes of model-range images in the authors' protocol: batches of :data:`PUBLISHED_BATCH`."""
    return encode_all(encoder.to(device), images, batch_size=PUBLISHED_BATCH, device=device)


def published_dataset(dataset: str) -> Optional[str]:
    """The authors' dataset name whose published files serve ``dataset`` (a data source such as
    ``mnist5k`` -> ``mnist``, or a model configuration name), or None when they published none."""
    from ..data import SOURCES

    name = SOURCES[dataset].setting if dataset in SOURCES else dataset
    return name if name in PUBLISHED_FILES else None


def _published_or_refuse(dataset: str) -> str:
    name = published_dataset(dataset)
    if name is None:
        raise ConfigError(
            f"no published FAD autoencoder exists for {dataset!r}; the authors released {', '.join(PUBLISHED_FILES)}"
        )
    return name


def published_files(directory: os.PathLike, dataset: str) -> Tuple[Path, Path]:
    """``(autoencoder, statistics)`` paths of ``dataset`` under a folder laid out like the authors'
    ``metrics/`` folder (``stat_checkpoints/`` and ``stats/``)."""
    ae, stats = PUBLISHED_FILES[_published_or_refuse(dataset)]
    return Path(directory) / ae, Path(directory) / stats


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or ["(no message)"])[0][:160]


def _named_for_another_dataset(path: Path, name: str, column: int) -> Optional[str]:
    """The dataset whose published file name ``path`` carries, when it is not ``name``'s (MNIST's and
    Fashion-MNIST's files have the same shapes: their names are what tells them apart)."""
    for other, files in PUBLISHED_FILES.items():
        if other != name and path.name == Path(files[column]).name:
            return other
    return None


def _layout(encoder: PublishedFADEncoder) -> str:
    dims: List[int] = []
    for block in encoder.encoder:
        conv = cast(nn.Sequential, block)[0]
        assert isinstance(conv, nn.Conv2d)
        dims.append(conv.out_channels)
    return (
        f"encoder.{{0..{len(dims) - 1}}}.0.weight/bias (conv 3x3 s2, widths {dims}, input {encoder.in_channels} "
        f"channel{'s' if encoder.in_channels > 1 else ''}), encoder.{{i}}.1.* (BatchNorm2d), latent_layer.weight "
        f"({encoder.code_dim}, {dims[-1] * 4}) and latent_layer.bias ({encoder.code_dim},)"
    )


def load_published_autoencoder(path: os.PathLike, dataset: str) -> PublishedFADEncoder:
    """The authors' FAD autoencoder for ``dataset`` (eval mode, CPU) from its ``state_dict`` file.

    ``encode(x)`` maps images ``(N, C, H, W)`` in [-1, 1] to codes ``(N, D)``. A missing, truncated or
    foreign file, a missing key, a key of another model or a wrong shape raises
    :class:`CheckpointError` with one line naming the problem and the layout expected.
    """
    path = Path(path)
    name = _published_or_refuse(dataset)
    spec = paper_setting(name)
    encoder = PublishedFADEncoder(spec.in_channels, spec.image_size, fad_code_dim(name))
    expected = encoder.state_dict()
    what = f"the published {name} FAD autoencoder {path}"
    other = _named_for_another_dataset(path, name, 0)
    if other:
        raise CheckpointError(
            f"{path} is named as the authors' {other} autoencoder, not {name}'s ({Path(PUBLISHED_FILES[name][0]).name})"
        )
    if not path.is_file():
        raise CheckpointError(
            f"{what} not found (copy {PUBLISHED_FILES[name][0]} from the FSVAE/ESVAE authors' metrics/ folder)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = (
            "truncated or corrupt" if isinstance(exc, (EOFError, RuntimeError, zipfile.BadZipFile)) else "unreadable"
        )
        raise CheckpointError(f"{what} is {reason} ({type(exc).__name__}: {_first_line(exc)})") from None
    if isinstance(state, dict) and state.get("format") == FORMAT:
        raise CheckpointError(
            f"{path} is this project's own FAD autoencoder: pass it with --fad-autoencoder, not as the published one"
        )
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        raise CheckpointError(
            f"{path} is a checkpoint record, not the published autoencoder's state_dict (expected {_layout(encoder)})"
        )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} is not a state_dict of tensors (expected {_layout(encoder)})")
    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(
            f"{what} lacks key{'s' if len(missing) > 1 else ''} {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}: not the published layout, which is {_layout(encoder)}"
        )
    foreign = [k for k in state if k not in expected and not k.startswith(PUBLISHED_DECODER_PREFIXES)]
    if foreign:
        raise CheckpointError(
            f"{what} has keys of another model ({', '.join(foreign[:4])}"
            f"{' ...' if len(foreign) > 4 else ''}); expected {_layout(encoder)} "
            f"and decoder keys {', '.join(p + '*' for p in PUBLISHED_DECODER_PREFIXES)}"
        )
    for key, want in expected.items():
        if tuple(state[key].shape) != tuple(want.shape):
            raise CheckpointError(
                f"{what}: {key} has shape {tuple(state[key].shape)}, the {name} layout needs "
                f"{tuple(want.shape)} (a file for another dataset?)"
            )
    encoder.load_state_dict({k: state[k] for k in expected})
    return encoder.eval()


def load_published_stats(path: os.PathLike) -> GaussianStats:
    """``mu``/``sigma`` of the authors' test-split codes (``.npz``) as float64 :class:`GaussianStats`
    (``n`` unknown: the file does not record it)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"published FAD statistics {path} not found (copy the dataset's "
            "stats/<dataset>_test_<D>.npz from the authors' metrics/ folder)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise CheckpointError(
            f"published FAD statistics {path} are truncated or not an .npz file "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if "mu" not in arrays or "sigma" not in arrays:
        raise CheckpointError(
            f"published FAD statistics {path} hold {sorted(arrays) or 'no arrays'}, "
            "expected arrays 'mu' (D,) and 'sigma' (D, D)"
        )
    mu, sigma = arrays["mu"], arrays["sigma"]
    if mu.dtype.kind not in "fiu" or sigma.dtype.kind not in "fiu":
        raise CheckpointError(
            f"published FAD statistics {path}: mu ({mu.dtype}) and sigma ({sigma.dtype}) must be numeric arrays"
        )
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise CheckpointError(
            f"published FAD statistics {path}: mu {mu.shape} and sigma {sigma.shape} do not "
            "form a (D,) mean and a (D, D) covariance"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise CheckpointError(f"published FAD statistics {path} contain non-finite values")
    if not np.allclose(sigma, sigma.T, rtol=1e-5, atol=1e-6 * max(float(np.abs(sigma).max()), 1e-30)):
        raise CheckpointError(f"published FAD statistics {path}: sigma is not symmetric, so it is no covariance")
    return GaussianStats(torch.from_numpy(mu.astype(np.float64)), torch.from_numpy(sigma.astype(np.float64)), None)
