"""Baseline models, registered into ``esvae.build_model`` when this package is imported
(``import esvae`` does it): ``ann_vae`` and ``fsvae``; TAID to follow."""
from esvae.models.registry import ModelEntry, register_model

from .ann_vae import ANNVAE, ANNVAEConfig, ann_vae_paper_config, ann_vae_paper_train
from .fsvae import FSVAE, FSVAEConfig, fsvae_paper_config, fsvae_paper_train

register_model(ModelEntry(
    "ann_vae", ann_vae_paper_config, ANNVAE,
    "ANN VAE (Table I's ANN row): BatchNorm + LeakyReLU, Gaussian latent, KLD weight 1/batches per epoch",
    samplers=(), paper_train=ann_vae_paper_train))

register_model(ModelEntry(
    "fsvae", fsvae_paper_config, FSVAE,
    "FSVAE: autoregressive Bernoulli posterior/prior with k votes, PSP-MMD loss",
    samplers=("fsvae_autoregressive",), paper_train=fsvae_paper_train))

__all__ = ["ANNVAE", "ANNVAEConfig", "FSVAE", "FSVAEConfig"]
