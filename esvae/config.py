"""The paper's settings and the resolved model/training configs.

Two words, kept apart everywhere: a *dataset* is a data source you train on (``mnist5k``,
``fashion``, ...; :data:`esvae.data.SOURCES`), a *setting* is the paper's per-dataset model and
training configuration (``mnist``, ``fashion``, ``cifar10``, ``celeba``; :data:`SETTINGS`). Each
dataset names the setting its models use (``mnist5k`` -> ``mnist``).

The values are docs/method.md section 3's table. The original code multiplies a configured LR by
``batch / 250``; this project stores and uses the resulting *effective* LR directly and shows how
it was derived (``lr_derivation``), so nothing is rescaled silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Tuple

from .errors import ConfigError


@dataclass(frozen=True)
class PaperSetting:
    """A setting: what the paper fixes per dataset for the models (shape, ESVAE's latent size) and
    for ESVAE's training (batch, LR, flips)."""

    name: str
    in_channels: int
    image_size: int  # square side after resizing/cropping
    latent_dim: int  # ESVAE's L in the paper
    batch_size: int
    effective_lr: float  # what the optimiser uses
    original_lr: float  # the original config's LR, before its batch/250 factor
    hflip: bool  # random horizontal flip on the training split

    @property
    def lr_derivation(self) -> str:
        return (
            f"{self.original_lr:g} x {self.batch_size}/250 = {self.effective_lr:g} "
            f"(the original code's batch/250 rule, applied once here at the paper batch size)"
        )


SETTINGS: Dict[str, PaperSetting] = {
    "mnist": PaperSetting("mnist", 1, 32, 32, 256, 0.003072, 0.003, False),
    "fashion": PaperSetting("fashion", 1, 32, 32, 256, 0.003072, 0.003, False),
    "cifar10": PaperSetting("cifar10", 3, 32, 128, 256, 0.0006144, 0.0006, True),
    "celeba": PaperSetting("celeba", 3, 64, 128, 64, 0.000256, 0.001, True),
}


def paper_setting(name: str) -> PaperSetting:
    try:
        return SETTINGS[name]
    except KeyError:
        from .data import SOURCES

        hint = f" (the dataset {name!r} uses the setting {SOURCES[name].setting!r})" if name in SOURCES else ""
        raise ConfigError(f"unknown setting {name!r}; expected one of: {', '.join(SETTINGS)}{hint}") from None


def hidden_dims_for(image_size: int) -> Tuple[int, ...]:
    """Encoder channels: 4 stride-2 convs for 32x32, 5 for 64x64; both end at 2x2."""
    if image_size == 32:
        return (32, 64, 128, 256)
    if image_size == 64:
        return (32, 64, 128, 256, 512)
    raise ConfigError(f"image_size must be 32 or 64, got {image_size}")


@dataclass
class SpikingVAEConfig:
    """Architecture of a spiking conv VAE (docs/method.md sections 1-3). Defaults are the paper's."""

    in_channels: int = 1
    image_size: int = 32
    latent_dim: int = 32
    timesteps: int = 16  # T
    hidden_dims: Tuple[int, ...] = (32, 64, 128, 256)
    tau: float = 0.25  # LIF leak factor
    v_threshold: float = 0.2  # LIF threshold
    surrogate: str = "rectangle"  # spike-function surrogate gradient
    readout_decay: float = 0.8  # membrane readout: sum_t y_t * decay^(T-1-t)
    sampler: str = "poisson"  # latent sampler (registry name)
    mmd_kernel: str = "rbf"  # "rbf" (paper) or "linear"
    mmd_weight: float = 0.001  # lambda in MSE + lambda * MMD^2
    lif_backend: str = "fused"  # "fused" multi-step op or the step-loop "reference"

    def validate(self) -> "SpikingVAEConfig":
        for key in ("in_channels", "latent_dim", "timesteps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        expected = hidden_dims_for(self.image_size)
        if tuple(self.hidden_dims) != expected:
            raise ConfigError(
                f"hidden_dims for image_size {self.image_size} must be {list(expected)}, got {list(self.hidden_dims)}"
            )
        if not 0.0 <= self.tau <= 1.0:
            raise ConfigError(f"tau must lie in [0, 1], got {self.tau}")
        if self.v_threshold <= 0:
            raise ConfigError(f"v_threshold must be positive, got {self.v_threshold}")
        if self.mmd_weight < 0:
            raise ConfigError(f"mmd_weight must be >= 0, got {self.mmd_weight}")
        if self.lif_backend not in ("fused", "reference"):
            raise ConfigError(f"lif_backend must be 'fused' or 'reference', got {self.lif_backend!r}")
        return self

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d


def apply_overrides(config, overrides: Mapping[str, Any]):
    """Return a copy of a dataclass config with ``overrides``; unknown keys list the valid ones."""
    valid = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    values = dict(overrides)
    if "hidden_dims" in values:
        values["hidden_dims"] = tuple(values["hidden_dims"])
    return dataclasses.replace(config, **values)


@dataclass
class TrainConfig:
    """Optimiser and loop settings; defaults for a setting come from :func:`paper_train_config`."""

    epochs: int = 300
    batch_size: int = 256
    lr: float = 0.003072  # effective LR used by AdamW (no hidden rescaling)
    lr_derivation: str = ""  # where ``lr`` came from, for the record
    prior_lr_multiplier: float = 10.0  # the prior bottleneck trains at 10x the base LR
    weight_decay: float = 0.001
    betas: Tuple[float, float] = (0.9, 0.999)
    hflip: bool = False  # random horizontal flip of training images
    seed: int = 0
    train_subset: int = 0  # 0 = the whole training split
    test_subset: int = 0  # 0 = the whole test split
    lr_rule: str = "paper_effective"  # how ``lr`` follows the batch size (LR_RULES)
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


LR_RULES = {
    "paper_effective": "the paper's effective LR at its batch size, kept whatever the batch",
    "original_linear_scaling": "the paper's effective LR scaled by batch / paper batch, as the original code's "
    "lr * batch / 250 rule does at any batch size",
}


def apply_lr_rule(cfg: TrainConfig, paper: TrainConfig, rule: str) -> TrainConfig:
    """Set ``cfg.lr`` from the paper's settings ``paper`` for ``cfg.batch_size`` under ``rule``.

    ``paper_effective`` keeps ``paper.lr`` (the LR the paper's runs used at ``paper.batch_size``);
    ``original_linear_scaling`` multiplies it by ``cfg.batch_size / paper.batch_size``: the original
    code computes ``lr * batch / 250`` from the configured batch, so a smaller batch trains at a
    proportionally smaller LR (ESVAE Fashion at batch 64: 0.003 x 64/250 = 0.000768).
    """
    if rule not in LR_RULES:
        raise ConfigError(f"unknown lr_rule {rule!r}; expected one of: {', '.join(LR_RULES)}")
    cfg.lr_rule = rule
    base = f"{paper.lr:g} ({paper.lr_derivation})" if paper.lr_derivation else f"{paper.lr:g}"
    if rule == "paper_effective" or cfg.batch_size == paper.batch_size:
        cfg.lr = paper.lr
        cfg.lr_derivation = f"lr_rule {rule}: the paper's effective LR {base}" + (
            ""
            if cfg.batch_size == paper.batch_size
            else f", kept at batch {cfg.batch_size} (paper batch {paper.batch_size}, no rescaling)"
        )
    else:
        cfg.lr = paper.lr * cfg.batch_size / paper.batch_size
        cfg.lr_derivation = (
            f"lr_rule {rule}: {paper.lr:g} x {cfg.batch_size}/{paper.batch_size} = {cfg.lr:g} "
            f"(the paper's effective LR {base} scaled linearly to batch {cfg.batch_size})"
        )
    return cfg


def paper_train_config(setting: str) -> TrainConfig:
    spec = paper_setting(setting)
    return TrainConfig(
        batch_size=spec.batch_size, lr=spec.effective_lr, lr_derivation=spec.lr_derivation, hflip=spec.hflip
    )
