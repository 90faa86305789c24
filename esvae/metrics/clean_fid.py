"""``fid_clean``: FID in the protocol the ESVAE paper used, clean-fid's "clean" mode (docs/metrics.md
section 6).

Preprocessing, as clean-fid 0.1.35's ``make_resizer("PIL", False, "bicubic", (299, 299))``: images
on the 0-255 scale (reference images uint8; generated ones in float, ``(x + 1) / 2 * 255`` unrounded,
as the ESVAE authors passed them to clean-fid's generator path), each channel converted to a
float32 PIL image (mode ``F``), resized with PIL's bicubic filter to 299x299 and clipped to
[0, 255], never quantised again (greyscale images
are repeated to 3 channels, as clean-fid's RGB conversion does). Features: the pool3 (2048-d)
activations of the same Inception-v3 network and weights as our torch-fidelity FID, fed the float
299x299 images directly (torch-fidelity's own entry point accepts only uint8 and resizes bilinearly
itself). The Frechet distance is :func:`esvae.metrics.frechet.frechet_distance` in float64.

The reference set's statistics are cached under the cache folder, keyed like torch-fidelity's
reference cache (dataset, split, N, image bytes' hash, weights' hash) plus the preprocessing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from .frechet import GaussianStats, frechet_distance
from .inception import InceptionWeights, default_cache_dir

log = logging.getLogger(__name__)

SIZE = 299
PREPROCESSING = (
    "0-255 scale -> per channel float32 PIL bicubic resize to 299x299, clipped to [0, 255], "
    "not re-quantised (clean-fid 0.1.35 'clean' mode); greyscale repeated to 3 channels; "
    "Inception-v3 pool3 features"
)


def to_255(images: torch.Tensor) -> torch.Tensor:
    """Model-range images in [-1, 1] -> float32 on the 0-255 scale, ``(x + 1) / 2 * 255``, not rounded
    (how the ESVAE authors handed generated images to clean-fid)."""
    return ((images.detach().float().clamp(-1, 1) + 1) / 2 * 255).cpu()


def clean_resize(images: torch.Tensor) -> torch.Tensor:
    """uint8, or float on the 0-255 scale, ``(N, C, H, W)`` (C = 1 or 3) -> float32 ``(N, 3, 299, 299)``."""
    from PIL import Image

    if images.dtype not in (torch.uint8, torch.float32) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected uint8 or float32 images (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    arrays = images.cpu().numpy().astype(np.float32)
    out = np.empty((images.shape[0], images.shape[1], SIZE, SIZE), dtype=np.float32)
    for i in range(arrays.shape[0]):
        for c in range(arrays.shape[1]):
            image = Image.fromarray(arrays[i, c], mode="F").resize((SIZE, SIZE), resample=Image.Resampling.BICUBIC)
            out[i, c] = np.asarray(image)
    resized = torch.from_numpy(out.clip(0, 255))
    return resized.expand(-1, 3, -1, -1).contiguous() if images.shape[1] == 1 else resized


class Pool3(nn.Module):
    """torch-fidelity's Inception-v3 up to pool3, taking float images ``(N, 3, 299, 299)`` in [0, 255].

    The same layers, weights and input scaling ``(x - 128) / 128`` as torch-fidelity's
    ``FeatureExtractorInceptionV3``; only its uint8 check and its internal bilinear resize are
    skipped (the images arrive at 299x299 already). Also usable as clean-fid's custom feature
    extractor (it is called with exactly such batches).
    """

    STAGES = (
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "MaxPool_1",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "MaxPool_2",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
        "Mixed_7a",
        "Mixed_7b",
        "Mixed_7c",
        "AvgPool",
    )

    def __init__(self, weights: InceptionWeights):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.network = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights.path)
        ).eval()
        self.weights = weights

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, SIZE, SIZE):
            raise ValueError(f"Pool3 takes float images (N, 3, {SIZE}, {SIZE}), got {tuple(images.shape)}")
        x = (images.float() - 128) / 128
        for stage in self.STAGES:
            x = getattr(self.network, stage)(x)
        return torch.flatten(x, 1)


def clean_features(
    images: torch.Tensor,
    extractor: Pool3,
    batch_size: int = 64,
    device: torch.device = torch.device("cpu"),
    progress: bool = False,
) -> torch.Tensor:
    """Pool3 features ``(N, 2048)`` float32 of uint8 (or 0-255 float) images after the clean resize."""
    from tqdm import tqdm

    extractor = extractor.to(device)
    out = []
    for start in tqdm(
        range(0, images.shape[0], batch_size), desc="clean-FID features", unit="batch", disable=not progress
    ):
        batch = clean_resize(images[start : start + batch_size]).to(device)
        out.append(extractor(batch).cpu())
    return torch.cat(out)


def _cache_file(reference_name: str, cache_dir: Optional[os.PathLike]) -> Path:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "clean-fid" / f"{reference_name}-clean-pil-bicubic-{SIZE}.pt"


def reference_stats(
    reference: torch.Tensor,
    extractor: Pool3,
    reference_name: Optional[str] = None,
    cache_dir: Optional[os.PathLike] = None,
    batch_size: int = 64,
    device: torch.device = torch.device("cpu"),
    progress: bool = False,
) -> GaussianStats:
    """Statistics of the reference images' clean features, cached under ``reference_name`` when given
    (a cache file that cannot be read is recomputed and replaced)."""
    from ..files import atomic_torch_save

    path = _cache_file(reference_name, cache_dir) if reference_name else None
    if path is not None and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            return GaussianStats(cached["mean"], cached["cov"], int(cached["n"]))
        except Exception as exc:  # a corrupt cache entry is recomputed, never trusted
            log.warning("ignoring unreadable clean-FID cache %s (%s)", path, type(exc).__name__)
    stats = GaussianStats.of(clean_features(reference, extractor, batch_size, device, progress))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"mean": stats.mean, "cov": stats.cov, "n": stats.n}, path)
    return stats


def fid_clean(
    generated: torch.Tensor,
    reference: torch.Tensor,
    weights: InceptionWeights,
    *,
    reference_name: Optional[str] = None,
    cache_dir: Optional[os.PathLike] = None,
    batch_size: int = 64,
    device: torch.device = torch.device("cpu"),
    progress: bool = False,
) -> float:
    """FID between ``generated`` and ``reference`` images (uint8, or float32 on the 0-255 scale) in
    clean-fid's protocol."""
    extractor = Pool3(weights)
    ref = reference_stats(reference, extractor, reference_name, cache_dir, batch_size, device, progress)
    gen = GaussianStats.of(clean_features(generated, extractor, batch_size, device, progress))
    return frechet_distance(gen, ref)
