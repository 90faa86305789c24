"""The ANN VAE baseline: architecture, loss by hand, KLD weight derived from the data."""

import math

import pytest
import torch

import esvae
from esvae.errors import ConfigError


@pytest.mark.parametrize("dataset,expected", [("fashion", 1_180_641), ("mnist", 1_180_641), ("cifar10", 1_181_795)])
def test_parameter_counts_match_method_table(dataset, expected):
    assert esvae.count_parameters(esvae.build_model("ann_vae", dataset)) == expected


def test_shapes_and_api():
    torch.manual_seed(0)
    model = esvae.build_model("ann_vae", "celeba").eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    mu = model.encode(x)
    assert mu.shape == (2, 128)
    images = model.decode(mu)
    assert images.shape == (2, 3, 64, 64) and images.abs().max() <= 1
    samples = model.sample(3, torch.Generator().manual_seed(0))
    assert torch.equal(samples, model.sample(3, torch.Generator().manual_seed(0)))


def test_loss_is_mse_plus_weighted_kld_by_hand():
    model = esvae.build_model("ann_vae", "fashion", kld_weight=0.5)
    from baselines.ann_vae import ANNVAEOutput

    x = torch.zeros(2, 1, 32, 32)
    recon = torch.full((2, 1, 32, 32), 0.5)
    mu = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    terms = model.loss(x, ANNVAEOutput(recon, mu, logvar, mu))
    # per sample: -1/2 sum(1 + logvar - mu^2 - e^logvar): [0.5 + (-0.5)(1 + ln2 - 2)] = 0.5 + 0.5(1 - ln2); [2.0]
    kld = ((0.5 + 0.5 * (1 - math.log(2.0))) + 2.0) / 2
    assert terms["kld"].item() == pytest.approx(kld, rel=1e-6)
    assert terms["mse"].item() == pytest.approx(0.25)
    assert terms["loss"].item() == pytest.approx(0.25 + 0.5 * kld, rel=1e-6)


def test_kld_weight_is_one_over_batches_per_epoch():
    model = esvae.build_model("ann_vae", "fashion")
    with pytest.raises(ConfigError, match="batches per epoch"):
        _ = model.kld_weight
    assert model.configure_training(steps_per_epoch=240) == {"kld_weight": pytest.approx(1 / 240)}
    fixed = esvae.build_model("ann_vae", "fashion", kld_weight=0.1)
    assert fixed.configure_training(steps_per_epoch=240) == {"kld_weight": 0.1}


def test_reparameterisation_uses_the_generator_and_reaches_the_encoder():
    model = esvae.build_model("ann_vae", "fashion", kld_weight=1.0)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    a = model(x, torch.Generator().manual_seed(3))
    b = model(x, torch.Generator().manual_seed(3))
    assert torch.equal(a.latent, b.latent)
    torch.testing.assert_close(
        a.latent, a.mu + torch.exp(0.5 * a.logvar) * torch.randn(a.mu.shape, generator=torch.Generator().manual_seed(3))
    )
    model.loss(x, a)["loss"].backward()
    assert model.fc_logvar.weight.grad.abs().sum() > 0 and model.encoder[0][0].weight.grad.abs().sum() > 0


def test_ann_vae_refuses_time_and_samplers():
    with pytest.raises(ConfigError, match="timesteps must be 1"):
        esvae.build_model("ann_vae", "fashion", timesteps=4)
    with pytest.raises(ConfigError, match="no pluggable latent sampler; models that take one: esvae, fsvae, taid"):
        esvae.build_model("ann_vae", "fashion", sampler="poisson")


def test_paper_training_settings():
    cfg = esvae.MODELS["ann_vae"].paper_train("cifar10")
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.prior_lr_multiplier) == (0.001, 250, 150, 1.0)
