"""ESVAE architecture, public API, checkpoints (own format and the original layout)."""

import pytest
import torch
from original_layout import naive_decode, naive_encode, original_esvae_state_dict

import esvae
from esvae.checkpoints import save_checkpoint
from esvae.errors import CheckpointError, ConfigError


@pytest.mark.parametrize(
    "dataset,expected", [("fashion", 855_905), ("mnist", 855_905), ("cifar10", 1_069_411), ("celeba", 3_696_227)]
)
def test_parameter_counts_match_method_table(dataset, expected):
    assert esvae.count_parameters(esvae.build_model("esvae", dataset)) == expected


def test_paper_configuration_and_overrides():
    model = esvae.build_model("esvae", "celeba", timesteps=4, latent_dim=16)
    assert (model.config.in_channels, model.config.image_size, model.config.latent_dim, model.timesteps) == (
        3,
        64,
        16,
        4,
    )
    assert model.config.hidden_dims == (32, 64, 128, 256, 512)
    with pytest.raises(ConfigError, match="timesteps must be a positive integer"):
        esvae.build_model("esvae", "fashion", timesteps=0)
    with pytest.raises(ConfigError, match="valid keys"):
        esvae.build_model("esvae", "fashion", latentdim=3)
    with pytest.raises(ConfigError, match="expected one of: ann_vae, esvae, fsvae, taid"):
        esvae.build_model("vae", "fashion")
    with pytest.raises(ConfigError, match="mnist, fashion, cifar10, celeba"):
        esvae.build_model("esvae", "svhn")


def test_encode_decode_sample_shapes_and_ranges():
    torch.manual_seed(0)
    model = esvae.build_model("esvae", "cifar10", timesteps=3, latent_dim=8).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    spikes = model.encode(x)
    assert spikes.shape == (3, 2, 8) and set(spikes.unique().tolist()) <= {0.0, 1.0}
    images = model.decode(spikes)
    assert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1
    g = torch.Generator().manual_seed(1)
    samples = model.sample(5, generator=g)
    assert samples.shape == (5, 3, 32, 32)
    assert torch.equal(samples, model.sample(5, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        model.encode(torch.zeros(2, 1, 32, 32))


def test_loss_is_mse_plus_weighted_mmd_and_reaches_all_parameters():
    torch.manual_seed(0)
    model = esvae.build_model("esvae", "fashion", timesteps=2)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    out = model(x, generator=torch.Generator().manual_seed(0))
    terms = model.loss(x, out)
    torch.testing.assert_close(terms["mse"], ((out.reconstruction - x) ** 2).mean())
    torch.testing.assert_close(terms["loss"], terms["mse"] + 0.001 * terms["mmd"])
    torch.testing.assert_close(out.posterior_rate, out.latent_spikes.mean(0))
    terms["loss"].backward()
    assert model.prior_bottleneck.weight.grad.abs().sum() > 0  # prior learns through the MMD
    assert model.encoder[0].weight.grad.abs().sum() > 0  # encoder learns through the sampler


def test_reconstruction_gradient_reaches_the_encoder_through_the_sampler():
    torch.manual_seed(0)
    model = esvae.build_model("esvae", "fashion", timesteps=4, mmd_weight=0.0)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    model.loss(x, model(x, generator=torch.Generator().manual_seed(0)))["loss"].backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0  # MSE alone trains the encoder
    assert model.prior_bottleneck.weight.grad is None or model.prior_bottleneck.weight.grad.abs().sum() == 0


def test_prior_bottleneck_trains_at_ten_times_the_lr():
    model = esvae.build_model("esvae", "fashion")
    groups = {g["name"]: g for g in model.param_groups(0.003072)}
    assert groups["prior_bottleneck"]["lr"] == pytest.approx(0.03072)
    assert {id(p) for p in groups["prior_bottleneck"]["params"]} == {id(p) for p in model.prior_bottleneck.parameters()}
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == 855_905


@pytest.mark.parametrize(
    "dataset,channels,latent,dims",
    [
        ("fashion", 1, 32, (32, 64, 128, 256)),
        ("celeba", 3, 128, (32, 64, 128, 256, 512)),
    ],
)
def test_original_checkpoint_computes_the_original_function(tmp_path, dataset, channels, latent, dims, caplog):
    T = 3
    sd = original_esvae_state_dict(channels, latent, dims, timesteps=T)
    path = tmp_path / "original.pth"
    torch.save({"state_dict": sd, "epoch": 299}, path)
    with caplog.at_level("INFO", logger="esvae"):
        model = esvae.load_original_checkpoint(path, "esvae", dataset, timesteps=T)
    assert not model.training
    assert any("posterior, prior" in note for note in model.checkpoint_notes)
    size = 64 if dataset == "celeba" else 32
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        ours = model.encode(x)  # (T, N, L)
        ref = naive_encode(sd, x, T, len(dims))  # (N, L, T)
        assert torch.equal(ours, ref.permute(2, 0, 1))
        assert 0 < ours.mean() < 1
        z = (torch.rand(2, latent, T, generator=torch.Generator().manual_seed(4)) < 0.4).float()
        torch.testing.assert_close(
            model.decode(z.permute(2, 0, 1)), naive_decode(sd, z, len(dims), dims[-1]), rtol=1e-4, atol=1e-5
        )
        eps_gen = torch.Generator().manual_seed(5)
        eps = torch.randn(4, latent, generator=eps_gen)
        expected_prior = torch.sigmoid(eps @ sd["sample_layer.0.weight"].T + sd["sample_layer.0.bias"])
        torch.testing.assert_close(model.prior_rate(4, torch.Generator().manual_seed(5)), expected_prior)


def test_original_checkpoint_with_wrong_shapes_or_keys_is_refused(tmp_path):
    sd = original_esvae_state_dict(1, 32, (32, 64, 128, 256))
    torch.save(sd, tmp_path / "bare.pth")  # a bare state dict loads too
    esvae.load_original_checkpoint(tmp_path / "bare.pth", "esvae", "fashion")
    with pytest.raises(CheckpointError, match=r"before_latent_layer.weight.*shape \(32, 1024\), expected \(16, 1024\)"):
        esvae.load_original_checkpoint(tmp_path / "bare.pth", "esvae", "fashion", latent_dim=16)
    bad = dict(sd)
    bad["extra_head.weight"] = torch.zeros(3)
    del bad["decoder.0.bias"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing \['decoder.0.bias'\].*unexpected \['extra_head.weight'\]"):
        esvae.load_original_checkpoint(tmp_path / "bad.pth", "esvae", "fashion")
    with pytest.raises(CheckpointError, match="saved with T=16.*pass timesteps=16"):
        esvae.load_original_checkpoint(tmp_path / "bare.pth", "esvae", "fashion", timesteps=8)
    wrong_decay = dict(sd)
    wrong_decay["membrane_output_layer.coef"] = torch.ones(1, 1, 1, 1, 16)
    torch.save(wrong_decay, tmp_path / "decay.pth")
    with pytest.raises(CheckpointError, match="not the decay powers"):
        esvae.load_original_checkpoint(tmp_path / "decay.pth", "esvae", "fashion")


def test_own_checkpoint_round_trip_and_corrupt_file(tmp_path):
    torch.manual_seed(0)
    model = esvae.build_model("esvae", "fashion", timesteps=2).eval()
    save_checkpoint(tmp_path / "ckpt.pt", model, epoch=3, step=12)
    loaded, ckpt = esvae.load_checkpoint(tmp_path / "ckpt.pt")
    assert (ckpt["epoch"], ckpt["step"], loaded.timesteps) == (3, 12, 2)
    assert ckpt["code_version"].startswith(esvae.__version__)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(
            model.sample(3, torch.Generator().manual_seed(0)), loaded.sample(3, torch.Generator().manual_seed(0))
        )
        assert torch.equal(model.encode(x), loaded.encode(x))
    data = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        esvae.load_checkpoint(tmp_path / "truncated.pt")
    with pytest.raises(CheckpointError, match="not found"):
        esvae.load_checkpoint(tmp_path / "nope.pt")


def test_version_1_checkpoints_read_under_todays_names(tmp_path):
    """Format 1 called the setting "dataset" and the run's settings "train_config" (holding its own
    "train_config" and "model_config_dataset"); such a file loads, and evaluation finds its data source
    (mnist5k, setting mnist) in the run's settings, not in the setting."""
    from esvae.evaluate import open_run

    torch.manual_seed(0)
    model = esvae.build_model("esvae", "mnist", timesteps=2).eval()
    run = {"dataset": "mnist5k", "model_config_dataset": "mnist", "train_config": {"seed": 5}}
    save_checkpoint(tmp_path / "new.pt", model, run_config={**run, "model_setting": "mnist"})
    old = torch.load(tmp_path / "new.pt", weights_only=True)
    old["format_version"] = 1
    old["dataset"] = old.pop("setting")
    del old["run_config"]
    old["train_config"] = run
    torch.save(old, tmp_path / "v1.pt")
    loaded, ckpt = esvae.load_checkpoint(tmp_path / "v1.pt")
    assert ckpt["setting"] == loaded.setting == "mnist" and ckpt["run_config"]["model_setting"] == "mnist"
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name])
    opened = open_run(tmp_path / "v1.pt", device="cpu")
    assert opened.source.name == "mnist5k" and opened.train_config == {"seed": 5}
    with pytest.raises(ConfigError, match="unknown setting 'mnist5k'.*uses the setting 'mnist'"):
        esvae.build_model("esvae", "mnist5k")


def test_linear_mmd_option_changes_the_loss_term():
    torch.manual_seed(0)
    model = esvae.build_model("esvae", "fashion", timesteps=2, mmd_kernel="linear")
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    out = model(x, generator=torch.Generator().manual_seed(0))
    delta = out.posterior_rate.mean(0) - out.prior_rate.mean(0)
    torch.testing.assert_close(model.loss(x, out)["mmd"], (delta**2).sum())
    with pytest.raises(ConfigError, match="linear, rbf"):
        esvae.build_model("esvae", "fashion", mmd_kernel="gauss")


@pytest.mark.parametrize("sampler", ["poisson", "bernoulli_st", "rate_repeat"])
def test_esvae_takes_each_declared_sampler(sampler):
    model = esvae.build_model("esvae", "fashion", timesteps=4, sampler=sampler)
    assert model.sampler.name == sampler
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    out = model(x, generator=torch.Generator().manual_seed(0))
    if sampler == "rate_repeat":  # ESVAE's rates are multiples of 1/T: the count is kept exactly
        assert torch.equal(out.sampled_spikes.sum(0), out.latent_spikes.sum(0))
    model.loss(x, out)["loss"].backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0


def test_model_refuses_a_sampler_it_does_not_take():
    with pytest.raises(
        ConfigError,
        match="model 'esvae' does not take the latent sampler 'fsvae_autoregressive'; it "
        r"accepts: poisson, bernoulli_st, rate_repeat \(fsvae_autoregressive is the "
        r"latent of: fsvae, taid\)",
    ):
        esvae.build_model("esvae", "fashion", sampler="fsvae_autoregressive")
    with pytest.raises(
        ConfigError,
        match="model 'taid' does not take the latent sampler 'poisson'; it accepts: "
        r"fsvae_autoregressive \(poisson is the latent of: esvae\)",
    ):
        esvae.build_model("taid", "fashion", sampler="poisson")


def test_time_axis_flag_matches_each_models_own_configuration():
    """The grid asks the registry whether a model has a time axis (T ablation, --timesteps); that flag
    must agree with the model itself: T > 1 in its paper configuration, and T fixed at 1 otherwise."""
    from esvae.models.registry import TOOL_MODELS

    for name, entry in {**esvae.MODELS, **TOOL_MODELS}.items():
        assert entry.time_axis == (esvae.build_model(name, "mnist").config.timesteps > 1), name
        if not entry.time_axis:
            with pytest.raises(ConfigError):
                esvae.build_model(name, "mnist", timesteps=4)
