"""What the commands share: the one-line argument errors, value checks, the model, data and
environment flags, and the one logging set-up."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List

from ..errors import ConfigError
from ..logs import FORMAT


def setup_logging() -> None:
    """The package's log records on stderr, in the format of the commands' log files."""
    logging.basicConfig(level=logging.INFO, format=FORMAT, stream=sys.stderr)


def data_names() -> List[str]:
    from ..data import SOURCES

    return list(SOURCES)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (no usage dump) and exits 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"esvae: error: {message} (see '{self.prog} --help')\n")


def bounded(convert, lowest, inclusive: bool, what: str):
    """argparse type: ``convert(text)`` that must be >= ``lowest`` (> when not ``inclusive``)."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or value < lowest or (value == lowest and not inclusive):  # NaN included
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


def env_default(name: str, fallback: str) -> str:
    """A flag's default from the environment (the workflow exports it), parsed by the flag's type."""
    return os.environ.get(name) or fallback


positive_int = bounded(int, 1, True, "a positive integer")
non_negative_int = bounded(int, 0, True, "an integer >= 0")
positive_float = bounded(float, 0.0, False, "a positive number")


def add_model_args(p) -> None:
    """--model, --dataset and the model settings the command line exposes."""
    from ..losses import MMD_KERNELS
    from ..models import MODELS
    from ..samplers import SAMPLERS

    p.add_argument("--model", required=True, choices=sorted(MODELS), help="registered model")
    p.add_argument(
        "--dataset",
        required=True,
        choices=data_names(),
        help="data set (mnist5k: the offline MNIST subset, MNIST model configuration)",
    )
    p.add_argument("--timesteps", type=positive_int, default=None, help="T (default: the paper's 16)")
    p.add_argument("--latent-dim", type=positive_int, default=None, help="L (default: the paper's for the dataset)")
    p.add_argument(
        "--sampler",
        choices=sorted(SAMPLERS),
        default=None,
        help="latent sampler (default: the model's own; each model accepts some)",
    )
    p.add_argument(
        "--mmd-kernel",
        choices=sorted(MMD_KERNELS),
        default=None,
        help="ESVAE's posterior/prior matching kernel (default: the paper's 5-kernel rbf)",
    )
    p.add_argument(
        "--fsvae-loss",
        choices=("mmd", "kld"),
        default=None,
        help="FSVAE/TAID latent loss: PSP distance 'mmd' (default) or Bernoulli 'kld'",
    )
    p.add_argument("--votes", type=positive_int, default=None, help="FSVAE/TAID votes per latent k (default 20)")


def add_environment_args(p, download_help: str = "allow torchvision to download a missing dataset") -> None:
    """--data-root, --download and --device."""
    p.add_argument("--data-root", default=None, help="data folder (default: $ESVAE_DATA or ./data)")
    p.add_argument("--download", action="store_true", help=download_help)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")


# config key -> (flag, argparse attribute) for the model settings the CLI exposes
MODEL_FLAGS = {
    "timesteps": ("--timesteps", "timesteps"),
    "latent_dim": ("--latent-dim", "latent_dim"),
    "mmd_kernel": ("--mmd-kernel", "mmd_kernel"),
    "sampler": ("--sampler", "sampler"),
    "loss": ("--fsvae-loss", "fsvae_loss"),
    "votes": ("--votes", "votes"),
}


def model_overrides(args) -> dict:
    """Config overrides from the flags; a flag the model has no setting for is refused by name."""
    import dataclasses

    from ..models import MODELS, model_entry

    def settings(name):
        config = model_entry(name).paper_config("mnist")
        return {f.name for f in dataclasses.fields(config)} - set(getattr(config, "UNUSED_FIELDS", {}))

    out = flag_values(args)
    for key in out:
        if key not in settings(args.model) and key != "sampler":  # the registry explains samplers itself
            takers = sorted(n for n in MODELS if key in settings(n))
            raise ConfigError(
                f"{MODEL_FLAGS[key][0]} does not apply to model {args.model!r}; it applies to: {', '.join(takers)}"
            )
    return out


def flag_values(args) -> dict:
    values = {key: getattr(args, attr) for key, (_, attr) in MODEL_FLAGS.items()}
    return {key: value for key, value in values.items() if value is not None}
