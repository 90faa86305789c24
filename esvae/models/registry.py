"""Model registry: ``name -> builder``, used by :func:`esvae.build_model` and the CLI's choices.

:data:`MODELS` holds the benchmark's models (what the CLI, the grid and the report list);
:data:`TOOL_MODELS` the networks the project trains for a metric (the FAD autoencoder), built and
trained by the same code (:func:`build_model`, :func:`esvae.train.train`) but never listed as a
model of the benchmark. An entry's ``benchmark`` flag says which."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

from torch import nn

from ..config import SpikingVAEConfig, TrainConfig, apply_overrides, hidden_dims_for, paper_setting, paper_train_config
from ..errors import ConfigError
from ..samplers import build_sampler
from .base import VAEModel


@dataclass(frozen=True)
class ModelEntry:
    name: str
    paper_config: Callable[[str], Any]  # setting -> config dataclass with the paper's values
    construct: Callable[[Any], VAEModel]  # resolved config -> model
    description: str
    paper_train: Callable[[str], TrainConfig]  # setting -> the paper's training settings
    samplers: Tuple[str, ...] = ()  # latent samplers the model accepts (first = paper's)
    label: str = ""  # how tables and figures name it ("" = its name)
    time_axis: bool = True  # runs over T time steps (False: T is 1, e.g. the ANN VAE)
    benchmark: bool = True  # a model of the benchmark (False: a network a metric trains, e.g. FAD's)


MODELS: Dict[str, ModelEntry] = {}
TOOL_MODELS: Dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> None:
    (MODELS if entry.benchmark else TOOL_MODELS)[entry.name] = entry


def model_label(name: str) -> str:
    """How tables and figures name a registered model (``"ANN VAE"``); an unknown name as it is."""
    entry = MODELS.get(name)
    return (entry.label or entry.name) if entry is not None else name


def model_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name] if name in MODELS else TOOL_MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; expected one of: {', '.join(sorted(MODELS))}") from None


def resolve_config(name: str, setting: str, **overrides):
    """The configuration of ``name`` in the paper ``setting`` with ``overrides`` applied and validated."""
    entry = model_entry(name)
    if "sampler" in overrides and not entry.samplers:
        raise ConfigError(
            f"model {name!r} has no pluggable latent sampler; models that take one: "
            f"{', '.join(sorted(n for n, e in MODELS.items() if e.samplers))}"
        )
    config = apply_overrides(entry.paper_config(setting), overrides).validate()
    sampler = getattr(config, "sampler", None)
    if sampler is not None and sampler not in entry.samplers:
        takers = sorted(n for n, e in MODELS.items() if sampler in e.samplers)
        hint = f" ({sampler} is the latent of: {', '.join(takers)})" if takers else ""
        raise ConfigError(
            f"model {name!r} does not take the latent sampler {sampler!r}; "
            f"it accepts: {', '.join(entry.samplers)}{hint}"
        )
    return config


def build_model(name: str, setting: str, **overrides) -> VAEModel:
    """Build registered model ``name`` in the paper ``setting`` (esvae.config.SETTINGS).

    ``setting`` is one of "mnist", "fashion", "cifar10", "celeba" (a dataset names its setting:
    ``esvae.data.SOURCES["mnist5k"].setting == "mnist"``); ``overrides`` replace config
    fields (e.g. ``latent_dim=64, timesteps=8``); an unknown key or value raises ``ConfigError``
    naming the valid ones.
    """
    entry = model_entry(name)
    config = resolve_config(name, setting, **overrides)
    model = entry.construct(config)
    model.model_name = name
    model.setting = setting
    return model


def _esvae_paper_config(setting: str) -> SpikingVAEConfig:
    spec = paper_setting(setting)
    return SpikingVAEConfig(
        in_channels=spec.in_channels,
        image_size=spec.image_size,
        latent_dim=spec.latent_dim,
        timesteps=16,
        hidden_dims=hidden_dims_for(spec.image_size),
    )


def _construct_esvae(config: SpikingVAEConfig) -> VAEModel:
    from .esvae import ESVAE

    return ESVAE(config, build_sampler(config.sampler))


def _construct_fad_autoencoder(config) -> VAEModel:
    from ..metrics.fad import FADAutoencoder

    return FADAutoencoder(config)


def _fad_paper_config(setting: str):
    from ..metrics.fad import fad_autoencoder_config

    return fad_autoencoder_config(setting)


def _fad_paper_train(setting: str) -> TrainConfig:
    from ..metrics.fad import fad_train_config

    return fad_train_config()


register_model(
    ModelEntry(
        "fad_autoencoder",
        _fad_paper_config,
        _construct_fad_autoencoder,
        "the deterministic ANN autoencoder whose codes FAD compares (FSVAE's metric)",
        paper_train=_fad_paper_train,
        label="FAD autoencoder",
        time_axis=False,
        benchmark=False,
    )
)

register_model(
    ModelEntry(
        "esvae",
        _esvae_paper_config,
        _construct_esvae,
        "ESVAE: spiking VAE with reparameterizable Poisson latent sampling",
        samplers=("poisson", "bernoulli_st", "rate_repeat"),
        label="ESVAE",
        paper_train=paper_train_config,
    )
)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (weights, biases, tdBN affine); buffers excluded."""
    return sum(p.numel() for p in model.parameters())
