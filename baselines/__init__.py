"""Baseline models, registered into ``esvae.build_model`` when this package is imported
(``import esvae`` does it): ``ann_vae``, ``fsvae`` and ``taid``."""

from esvae.models.registry import ModelEntry, register_model
from esvae.samplers import build_sampler

from .ann_vae import ANNVAE, ANNVAEConfig, ann_vae_paper_config, ann_vae_paper_train
from .fsvae import FSVAE, FSVAEConfig, fsvae_paper_config, fsvae_paper_train
from .taid import TAID, TAIDConfig, TemporalAttentionReadout, taid_paper_config, taid_paper_train

register_model(
    ModelEntry(
        "ann_vae",
        ann_vae_paper_config,
        ANNVAE,
        "ANN VAE (Table I's ANN row): BatchNorm + LeakyReLU, Gaussian latent, KLD weight 1/batches per epoch",
        samplers=(),
        time_axis=False,
        paper_train=ann_vae_paper_train,
        label="ANN VAE",
    )
)

register_model(
    ModelEntry(
        "fsvae",
        fsvae_paper_config,
        lambda config: FSVAE(config, build_sampler(config.sampler)),
        "FSVAE: autoregressive Bernoulli posterior/prior with k votes, PSP-MMD loss",
        samplers=("fsvae_autoregressive",),
        paper_train=fsvae_paper_train,
        label="FSVAE",
    )
)

register_model(
    ModelEntry(
        "taid",
        taid_paper_config,
        lambda config: TAID(config, build_sampler(config.sampler)),
        "TAID: FSVAE with a learned temporal-attention readout (sigmoid(Conv1d over T)) instead of 0.8^(T-1-t)",
        samplers=("fsvae_autoregressive",),
        paper_train=taid_paper_train,
        label="TAID",
    )
)

__all__ = ["ANNVAE", "ANNVAEConfig", "FSVAE", "FSVAEConfig", "TAID", "TAIDConfig", "TemporalAttentionReadout"]
