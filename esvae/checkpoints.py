"""Checkpoints: this project's own format, and the original authors' layout (docs/method.md section 6).

Own format (one ``torch.save`` dict, written atomically)::

    {"format": "esvae-checkpoint", "format_version": 2, "model_name", "setting", "model_config",
     "run_config", "state_dict", "optimizer", "epoch", "step", "code_version", "torch_version",
     "training_state"}

``setting`` is the paper setting the model was built with (``build_model(model_name, setting,
**model_config)``); ``run_config`` is the training run's resolved settings (its ``config.json``).
Version 1 named them ``dataset`` and ``train_config`` (the latter holding a ``train_config`` of its
own, and ``model_config_dataset`` for ``model_setting``); :func:`read_checkpoint` reads those files
under today's names.

Original layout: a ``state_dict`` (bare or under the key ``"state_dict"``) whose conv and
transposed-conv weights are time-last 3-D ``(Cout, Cin, 3, 3, 1)`` / ``(Cin, Cout, 3, 3, 1)``, with
the readout's buffer ``membrane_output_layer.coef`` (the decay weights, shape ``(1, 1, 1, 1, T)``).
The rest is per model (``model.original_layout``): ESVAE's prior bottleneck is ``sample_layer.0``
and its checkpoints also hold FSVAE's unused ``prior.layers.*`` / ``posterior.layers.*``; FSVAE
uses those and stores zero ``initial_input`` buffers.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from .errors import CheckpointError, EsvaeError
from .files import atomic_torch_save, zip_damage
from .models.base import OriginalLayout, VAEModel
from .models.registry import MODELS, build_model
from .spiking import MembraneReadout

log = logging.getLogger(__name__)

FORMAT = "esvae-checkpoint"
FORMAT_VERSION = 2

# The original readout stores its decay weights 0.8^(T-1-t) as a buffer of shape (1, 1, 1, 1, T);
# ours computes them. The buffer is checked against the model (T and decay), then dropped.
_ORIGINAL_READOUT_BUFFER = "membrane_output_layer.coef"


def _check_readout_buffer(coef: torch.Tensor, model: VAEModel) -> None:
    readout = getattr(model, "readout", None)
    if not isinstance(readout, MembraneReadout):
        raise CheckpointError(f"{_ORIGINAL_READOUT_BUFFER} is a fixed membrane readout, which this model does not have")
    timesteps = model.config.timesteps
    expected = readout.weights(timesteps, dtype=torch.float64)
    flat = coef.detach().double().flatten()
    if flat.numel() != expected.numel():
        raise CheckpointError(
            f"original checkpoint was saved with T={flat.numel()} ({_ORIGINAL_READOUT_BUFFER} has "
            f"{flat.numel()} weights) but the model has T={timesteps}; pass timesteps={flat.numel()}"
        )
    if not torch.allclose(flat, expected, rtol=1e-5, atol=1e-7):
        raise CheckpointError(
            f"{_ORIGINAL_READOUT_BUFFER} holds {flat.tolist()}, not the decay powers "
            f"{model.config.readout_decay}^(T-1-t) this model uses"
        )


@functools.lru_cache(maxsize=1)
def git_commit(length: Optional[int] = None) -> str:
    """The checkout's commit (``length`` hex digits, all by default) plus ``-dirty`` when tracked
    files changed; ``""`` outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    short = [f"--short={length}"] if length else []
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", *short, "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{commit}{'-dirty' if dirty else ''}" if commit else ""


def code_version() -> str:
    """Package version plus the git commit (and ``-dirty``) when run from a checkout."""
    from . import __version__

    commit = git_commit(12)
    return f"{__version__}+{commit}" if commit else __version__


def save_checkpoint(
    path: os.PathLike,
    model: VAEModel,
    *,
    optimizer: Optional[torch.optim.Optimizer] = None,
    epoch: int = 0,
    step: int = 0,
    run_config: Optional[Dict[str, Any]] = None,
    training_state: Optional[Dict[str, Any]] = None,
) -> None:
    """Write the project's checkpoint format atomically (model, optimiser, epoch, config, code
    version; ``training_state``: what resuming needs besides, see :mod:`esvae.train`)."""
    atomic_torch_save(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_name": model.model_name,
            "setting": model.setting,
            "model_config": model.config.to_dict(),
            "run_config": run_config or {},
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "epoch": epoch,
            "step": step,
            "code_version": code_version(),
            "torch_version": str(torch.__version__),
            "training_state": training_state,
        },
        path,
    )


def _check_integrity(path: Path) -> None:
    """Refuse a checkpoint whose zip entries fail their CRC-32 (:func:`esvae.files.zip_damage`)."""
    damage = zip_damage(path)
    if damage is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: {damage}")


def _read(path: os.PathLike, map_location) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    _check_integrity(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated zip, a pickle of something else, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {one_line(exc)}") from None


def one_line(exc: Exception) -> str:
    """torch.load's errors span lines and advise weights_only=False; keep the cause, on one line."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = (
            "not a weights-only torch file (" + text.split("WeightsUnpickler error:")[1].split("Check the doc")[0] + ")"
        )
    return f"{type(exc).__name__}: " + " ".join(text.split())[:400]


# The entries every checkpoint of this format has, with their types (checked on reading, so a
# damaged or foreign file is refused by name instead of failing later with a KeyError).
_ENTRIES = {
    "model_name": str,
    "setting": str,
    "model_config": dict,
    "run_config": dict,
    "state_dict": dict,
    "epoch": int,
    "step": int,
}


def mistyped_entries(entries: Any, spec: Dict[str, type]) -> List[str]:
    """The keys of ``spec`` that ``entries`` (a dict, or anything else) lacks or holds with another type."""
    entries = entries if isinstance(entries, dict) else {}
    return [key for key, kind in spec.items() if not isinstance(entries.get(key), kind)]


def read_checkpoint(path: os.PathLike, map_location="cpu") -> Dict[str, Any]:
    """The dict of a checkpoint of this project's format, its entries checked; CheckpointError otherwise."""
    ckpt = _read(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an esvae checkpoint (no 'format': '{FORMAT}' entry); "
            "for the original authors' checkpoints use load_original_checkpoint"
        )
    if ckpt.get("format_version") == 1:
        _upgrade_version_1(ckpt)
    bad = mistyped_entries(ckpt, _ENTRIES)
    if bad:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its entry {bad[0]!r} is "
            f"{type(ckpt.get(bad[0])).__name__}, expected {_ENTRIES[bad[0]].__name__}"
        )
    if not all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values()):
        raise CheckpointError(f"checkpoint {path} is damaged: its state_dict holds non-tensors")
    return ckpt


def _upgrade_version_1(ckpt: Dict[str, Any]) -> None:
    """Version 1's names -> today's (see the module doc), in place."""
    for old, new in (("dataset", "setting"), ("train_config", "run_config")):
        if old in ckpt and new not in ckpt:
            ckpt[new] = ckpt.pop(old)
    run = ckpt.get("run_config")
    if isinstance(run, dict) and "model_config_dataset" in run:
        run["model_setting"] = run.pop("model_config_dataset")


def load_checkpoint(path: os.PathLike, map_location="cpu") -> Tuple[VAEModel, Dict[str, Any]]:
    """Load a checkpoint of this project's format; returns ``(model, checkpoint dict)``."""
    ckpt = read_checkpoint(path, map_location)
    try:
        model = build_model(ckpt["model_name"], ckpt["setting"], **ckpt["model_config"])
    except (EsvaeError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} names a model that cannot be built "
            f"({ckpt['model_name']!r} in setting {ckpt['setting']!r}): {exc}"
        ) from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit model {ckpt['model_name']!r}: {one_line(exc)}") from None
    steps = ckpt["run_config"].get("steps_per_epoch")
    if isinstance(steps, int) and steps > 0:  # derived from the training data (the ANN VAE's KLD weight)
        model.configure_training(steps_per_epoch=steps)
    return model, ckpt


def convert_original_state_dict(
    original: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor], layout: OriginalLayout
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Map an original-layout state dict onto ``target``'s keys and shapes under ``layout``.

    Returns ``(converted, ignored_keys)``. Raises ``CheckpointError`` naming missing, unexpected
    and mis-shaped keys, and non-zero constant buffers.
    """
    converted: Dict[str, torch.Tensor] = {}
    ignored: List[str] = []
    unexpected: List[str] = []
    for key, value in original.items():
        if key in layout.zero_buffers:
            if bool(value.detach().ne(0).any()):
                raise CheckpointError(
                    f"original buffer {key!r} should be all zeros (the constant initial input) "
                    f"but holds non-zero values; this is not the expected model"
                )
            continue
        if key.startswith(layout.unused_prefixes):
            ignored.append(key)
            continue
        ours = key
        for old, new in layout.renames.items():
            if key.startswith(old):
                ours = new + key[len(old) :]
        if ours not in target:
            unexpected.append(key)
            continue
        if value.dim() == 5 and value.shape[-1] == 1:  # time-last (k, k, 1) kernel -> 2-D kernel
            value = value.squeeze(-1)
        if tuple(value.shape) != tuple(target[ours].shape):
            raise CheckpointError(
                f"original key {key!r} has shape {tuple(value.shape)}, expected "
                f"{tuple(target[ours].shape)} (+ trailing 1 for conv kernels) for {ours!r}"
            )
        converted[ours] = value.to(target[ours].dtype)
    missing = sorted(set(target) - set(converted))
    if missing or unexpected:
        raise CheckpointError(
            "original checkpoint does not match the model: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    return converted, ignored


def load_original_checkpoint(path: os.PathLike, name: str, setting: str, map_location="cpu", **overrides) -> VAEModel:
    """Load a checkpoint saved by the paper authors' code into ``build_model(name, setting, **overrides)``.

    The model computes the same function as the original network. Models with a known layout:
    ``esvae`` and ``fsvae`` (``model.original_layout``). Unused FSVAE modules stored in ESVAE
    checkpoints are ignored with a logged note (also kept in ``model.checkpoint_notes``).
    Returns the model in eval mode.
    """
    model = build_model(name, setting, **overrides)  # fails on bad names before reading a large file
    if model.original_layout is None:
        known = sorted(n for n in MODELS if getattr(build_model(n, "mnist"), "original_layout", None))
        raise CheckpointError(
            f"no original checkpoint layout is known for model {name!r}; "
            f"load_original_checkpoint supports: {', '.join(known)}"
        )
    raw = _read(path, map_location)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict (expected a dict of tensors, bare or under 'state_dict')")
    state = dict(state)
    if _ORIGINAL_READOUT_BUFFER in state:
        _check_readout_buffer(state.pop(_ORIGINAL_READOUT_BUFFER), model)
    converted, ignored = convert_original_state_dict(state, model.state_dict(), model.original_layout)
    model.load_state_dict(converted)
    notes = []
    if ignored:
        prefixes = sorted({k.split(".")[0] for k in ignored})
        notes.append(f"ignored {len(ignored)} tensors of modules unused by {name}: {', '.join(prefixes)}")
        log.info("loading %s: %s", path, notes[-1])
    model.checkpoint_notes = notes
    return model.eval()
