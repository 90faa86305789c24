"""FID, KID and IS through torch-fidelity, with this project's weights resolution and labels.

Inputs are uint8 images ``(N, C, H, W)`` (greyscale repeated to 3 channels); torch-fidelity
resizes them to 299x299 itself. The reference set's features are cached by torch-fidelity under a
name that encodes everything they depend on (torch-fidelity 0.4.0 keys its cache by that name
alone): dataset, split, N, image size and channels, and the weights file's hash.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Dict, Optional

import torch

from .inception import InceptionWeights, default_cache_dir, refuse_inception_score

log = logging.getLogger(__name__)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Model-range images in [-1, 1] -> uint8 [0, 255] (the inverse of ``2 * u / 255 - 1``, rounded)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


class UInt8Images(torch.utils.data.Dataset):
    """A uint8 ``(N, C, H, W)`` tensor as torch-fidelity input: items ``(3, H, W)`` uint8."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 images (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index]
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


def reference_cache_name(dataset: str, split: str, images: torch.Tensor, weights: InceptionWeights) -> str:
    """torch-fidelity cache key for a reference set: everything its features depend on, including a
    hash of the image bytes (so a re-preprocessed or different dataset cannot reuse stale features)."""
    import hashlib

    n, c, h, w = images.shape
    content = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:12]
    return f"esvae-{dataset}-{split}-n{n}-{h}x{w}-c{c}-uint8-{content}-inception-{weights.sha256[:16]}"


def inception_score_splits(n: int) -> int:
    """The usual 10 splits, fewer for small sets so that each split holds at least 2 images
    (a one-image split always scores exactly 1)."""
    return max(1, min(10, n // 2))


def torch_fidelity_version() -> str:
    import torch_fidelity

    return torch_fidelity.__version__


def fidelity_metrics(
    generated: torch.Tensor,
    reference: Optional[torch.Tensor],
    weights: InceptionWeights,
    *,
    fid: bool = True,
    kid: bool = True,
    isc: bool = False,
    reference_name: Optional[str] = None,
    device: torch.device = torch.device("cpu"),
    batch_size: int = 64,
    kid_subset_size: int = 1000,
    cache_dir: Optional[os.PathLike] = None,
    verbose: bool = False,
) -> Dict[str, float]:
    """torch-fidelity's FID / KID (generated vs reference) and IS (generated); raw values.

    ``reference_name`` (from :func:`reference_cache_name`) turns on the feature cache for the
    reference set. IS raises :class:`MetricUnavailableError` unless the weights have the classifier.
    """
    import torch_fidelity

    if isc:
        refuse_inception_score(weights)
    if (fid or kid) and reference is None:
        raise ValueError("FID and KID need a reference set")
    n_gen = generated.shape[0]
    subset = min(kid_subset_size, n_gen, reference.shape[0] if reference is not None else n_gen)
    kwargs = dict(
        input1=UInt8Images(generated),
        fid=fid,
        kid=kid,
        isc=isc,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights.path),
        cuda=device.type == "cuda",
        batch_size=batch_size,
        save_cpu_ram=True,
        verbose=verbose,
        kid_subset_size=subset,
        isc_splits=inception_score_splits(n_gen),
        cache_root=str(Path(cache_dir) if cache_dir else default_cache_dir() / "torch-fidelity"),
    )
    if reference is not None:
        kwargs["input2"] = UInt8Images(reference)
        if reference_name:
            kwargs.update(cache=True, input2_cache_name=reference_name)
    device_scope = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    # torch-fidelity prints its summary to stdout (progress bars go to stderr when verbose).
    with device_scope, contextlib.redirect_stdout(io.StringIO()):
        result = torch_fidelity.calculate_metrics(**kwargs)
    return {k: float(v) for k, v in result.items()}
