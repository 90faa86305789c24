"""The paper-comparable protocols: FAD with the authors' published autoencoder layout, FID in
clean-fid's protocol (checked against clean-fid itself) and the energy estimate."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from esvae.cli import main
from esvae.data import load_split
from esvae.metrics.fad import load_published_autoencoder, load_published_stats, published_files

# --- a published-layout autoencoder, built from the documented key names and shapes ---------------


def _published_state(in_channels=1, widths=(32, 64, 128, 256), code=64, seed=0):
    """The authors' state_dict layout: encoder.{i}.0 conv 3x3 s2, encoder.{i}.1 BatchNorm2d,
    latent_layer Linear(widths[-1] * 4 -> code), and decoder keys FAD ignores."""
    g = torch.Generator().manual_seed(seed)
    state, cin = {}, in_channels
    for i, w in enumerate(widths):
        state[f"encoder.{i}.0.weight"] = torch.randn(w, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        state[f"encoder.{i}.0.bias"] = torch.randn(w, generator=g) * 0.1
        state[f"encoder.{i}.1.weight"] = 1 + 0.1 * torch.randn(w, generator=g)
        state[f"encoder.{i}.1.bias"] = 0.1 * torch.randn(w, generator=g)
        state[f"encoder.{i}.1.running_mean"] = 0.1 * torch.randn(w, generator=g)
        state[f"encoder.{i}.1.running_var"] = 0.5 + torch.rand(w, generator=g)
        state[f"encoder.{i}.1.num_batches_tracked"] = torch.tensor(100)
        cin = w
    state["latent_layer.weight"] = torch.randn(code, widths[-1] * 4, generator=g) * 0.03
    state["latent_layer.bias"] = torch.randn(code, generator=g) * 0.1
    state["decoder_input.weight"] = torch.randn(widths[-1] * 4, code, generator=g)  # decoder half: ignored
    state["decoder_input.bias"] = torch.zeros(widths[-1] * 4)
    state["decoder.0.0.weight"] = torch.randn(widths[-1], widths[-2], 3, 3, generator=g)
    state["final_layer.3.weight"] = torch.randn(widths[0], in_channels, 3, 3, generator=g)
    return state


def _codes_by_hand(state, x, layers=4, batch=128):
    """The authors' protocol by hand: per batch of ``batch`` images, conv -> BN with the batch's own
    mean and biased variance (eps 1e-5; their code never calls eval()) -> LeakyReLU(0.01), flatten,
    linear."""
    if x.shape[0] > batch:
        return torch.cat([_codes_by_hand(state, x[i : i + batch], layers, batch) for i in range(0, x.shape[0], batch)])
    for i in range(layers):
        x = F.conv2d(x, state[f"encoder.{i}.0.weight"], state[f"encoder.{i}.0.bias"], stride=2, padding=1)
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        x = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
        x = x * state[f"encoder.{i}.1.weight"][:, None, None] + state[f"encoder.{i}.1.bias"][:, None, None]
        x = torch.where(x > 0, x, 0.01 * x)
    return x.flatten(1) @ state["latent_layer.weight"].T + state["latent_layer.bias"]


def test_published_autoencoder_computes_the_documented_codes(tmp_path):
    state = _published_state()
    torch.save(state, tmp_path / "fashion_64.pth")
    encoder = load_published_autoencoder(tmp_path / "fashion_64.pth", "fashion")
    x = torch.rand(300, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert not encoder.training and encoder.code_dim == 64
    from esvae.metrics.fad import published_codes

    assert torch.allclose(published_codes(encoder, x), _codes_by_hand(state, x), atol=1e-5)  # batches 128, 128, 44
    assert not torch.allclose(encoder.encode(x[:10]), encoder.encode(x[:20])[:10], atol=1e-4)  # batch statistics
    assert torch.equal(encoder.encoder[0][1].running_mean, state["encoder.0.1.running_mean"])  # never updated
    # CelebA's 64x64 layout has a fifth (512) layer and 128-d codes; MNIST-5k runs use MNIST's file.
    big = _published_state(3, (32, 64, 128, 256, 512), 128)
    torch.save(big, tmp_path / "celeba_128.pth")
    y = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    assert torch.allclose(
        load_published_autoencoder(tmp_path / "celeba_128.pth", "celeba").encode(y),
        _codes_by_hand(big, y, layers=5),
        atol=1e-5,
    )
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pth")  # saved from DataParallel
    assert torch.equal(
        load_published_autoencoder(tmp_path / "dp.pth", "fashion").latent_layer.bias, state["latent_layer.bias"]
    )
    assert published_files("/x", "mnist5k") == (
        Path("/x/stat_checkpoints/mnist_64.pth"),
        Path("/x/stats/mnist_test_64.npz"),
    )


def test_published_stats_are_read_as_float64(tmp_path):
    mu, sigma = np.arange(3, dtype=np.float32), np.diag([1.0, 2.0, 3.0]).astype(np.float32)
    np.savez(tmp_path / "s.npz", mu=mu, sigma=sigma)
    stats = load_published_stats(tmp_path / "s.npz")
    assert stats.mean.dtype == torch.float64 and stats.mean.tolist() == [0, 1, 2] and stats.cov[2, 2] == 3
    assert stats.n is None


@pytest.fixture
def published_pair(tmp_path):
    """A Fashion-layout autoencoder file and statistics of its codes on 200 noise images."""
    state = _published_state()
    torch.save(state, tmp_path / "fashion_64.pth")
    codes = _codes_by_hand(state, torch.rand(200, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    np.savez(tmp_path / "fashion_test_64.npz", mu=codes.mean(0).numpy(), sigma=np.cov(codes.numpy(), rowvar=False))
    return tmp_path / "fashion_64.pth", tmp_path / "fashion_test_64.npz", state


def _write_bad(kind, ae, stats, tmp_path):
    """One broken input per kind; returns (autoencoder, stats) paths and the fragment the error must name."""
    state = torch.load(ae, weights_only=True)
    bad = tmp_path / "bad.pth"
    if kind == "missing key":
        del state["latent_layer.bias"]
        torch.save(state, bad)
        return bad, stats, "lacks key latent_layer.bias"
    if kind == "wrong shape":  # CIFAR-10's layout (3 input channels, 128-d codes)
        torch.save(_published_state(3, code=128), bad)
        return bad, stats, "encoder.0.0.weight has shape (32, 3, 3, 3), the fashion layout needs (32, 1, 3, 3)"
    if kind == "truncated":
        data = ae.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        return bad, stats, "is truncated or corrupt"
    if kind == "other model":  # an ESVAE model's weights
        import esvae

        torch.save(esvae.build_model("esvae", "fashion", timesteps=2).state_dict(), bad)
        return bad, stats, "not the published layout"
    if kind == "project's own autoencoder":
        torch.save({"format": "esvae-fad-autoencoder", "state_dict": {}}, bad)
        return bad, stats, "this project's own FAD autoencoder"
    if kind == "empty file":
        bad.write_bytes(b"")
        return bad, stats, "is truncated or corrupt"
    if kind == "another dataset's name":  # MNIST and Fashion files have the same shapes
        named = tmp_path / "mnist_64.pth"
        named.write_bytes(ae.read_bytes())
        return named, stats, "is named as the authors' mnist autoencoder, not fashion's"
    if kind == "text stats":
        bad_stats = tmp_path / "bad.npz"
        np.savez(bad_stats, mu=np.array(["a"] * 64), sigma=np.eye(64))
        return ae, bad_stats, "must be numeric arrays"
    if kind == "asymmetric sigma":
        bad_stats = tmp_path / "bad.npz"
        np.savez(bad_stats, mu=np.zeros(64), sigma=np.triu(np.ones((64, 64))))
        return ae, bad_stats, "sigma is not symmetric"
    if kind == "truncated stats":
        data = stats.read_bytes()
        bad_stats = tmp_path / "bad.npz"
        bad_stats.write_bytes(data[: len(data) // 2])
        return ae, bad_stats, "are truncated or not an .npz file"
    if kind == "stats without sigma":
        bad_stats = tmp_path / "bad.npz"
        np.savez(bad_stats, mu=np.zeros(64))
        return ae, bad_stats, "expected arrays 'mu' (D,) and 'sigma' (D, D)"
    if kind == "stats of another dataset":
        bad_stats = tmp_path / "bad.npz"
        np.savez(bad_stats, mu=np.zeros(128), sigma=np.eye(128))
        return ae, bad_stats, "are 128-d, the autoencoder"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "missing key",
        "wrong shape",
        "truncated",
        "empty file",
        "other model",
        "project's own autoencoder",
        "another dataset's name",
        "truncated stats",
        "stats without sigma",
        "text stats",
        "asymmetric sigma",
        "stats of another dataset",
    ],
)
def test_bad_published_files_are_one_line_and_exit_2(kind, published_pair, short_run, tmp_path, capsys):
    ae, stats, fragment = _write_bad(kind, *published_pair[:2], tmp_path)
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(short_run),
            "--out",
            str(out),
            "--metrics",
            "fad_published",
            "--fad-published-autoencoder",
            str(ae),
            "--fad-published-stats",
            str(stats),
            "--num-samples",
            "8",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert not out.exists()  # refused before anything is written


def test_one_published_file_alone_is_refused(published_pair, short_run, tmp_path, capsys):
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(short_run),
                "--out",
                str(tmp_path / "e"),
                "--metrics",
                "fad_published",
                "--fad-published-autoencoder",
                str(published_pair[0]),
            ]
        )
        == 2
    )
    assert "go together" in capsys.readouterr().err


def test_evaluate_fad_published_is_the_frechet_distance_of_the_codes(published_pair, short_run, data_root, tmp_path):
    ae, stats, state = published_pair
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(short_run),
                "--out",
                str(out),
                "--metrics",
                "fad,fad_published",
                "--fad-published-autoencoder",
                str(ae),
                "--fad-published-stats",
                str(stats),
                "--num-samples",
                "80",
                "--data-root",
                data_root,
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    entry = m["fad_published"]
    assert entry["name"] == "FAD@80" and entry["code_dim"] == 64 and entry["n_generated"] == 80
    assert "batch statistics over batches of 128" in entry["batch_norm"]
    import hashlib

    assert entry["autoencoder_sha256"] == hashlib.sha256(ae.read_bytes()).hexdigest()
    assert entry["label"] == f"published AE {entry['autoencoder_sha256'][:8]}, stats {entry['stats_sha256'][:8]}"
    assert m["fad"]["value"] is None  # our own autoencoder was not given: refused, not mixed up
    # The same generated images (same seed and batch), encoded by hand, against the file's mu/sigma (scipy).
    from esvae.evaluate import generate, open_run

    run = open_run(short_run, "cpu")
    images = generate(run.model, 80, run.train_config["batch_size"], run.device, run.seed)
    codes = _codes_by_hand(state, images).double().numpy()
    ref = np.load(stats)
    mu, sigma = codes.mean(0), np.cov(codes, rowvar=False)
    root = scipy.linalg.sqrtm(sigma @ ref["sigma"]).real
    expected = ((mu - ref["mu"]) ** 2).sum() + np.trace(sigma) + np.trace(ref["sigma"]) - 2 * np.trace(root)
    assert entry["value"] == pytest.approx(expected, rel=1e-5)
    # A folder laid out like the authors' metrics/ gives the same value; a folder without the files, a refusal.
    layout = tmp_path / "metrics"
    (layout / "stat_checkpoints").mkdir(parents=True), (layout / "stats").mkdir()
    (
        os.link(ae, layout / "stat_checkpoints" / "fashion_64.pth"),
        os.link(stats, layout / "stats" / "fashion_test_64.npz"),
    )
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(short_run),
                "--out",
                str(tmp_path / "dir"),
                "--metrics",
                "fad_published",
                "--fad-published-dir",
                str(layout),
                "--num-samples",
                "80",
                "--data-root",
                data_root,
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "dir" / "metrics.json").read_text())["fad_published"]["value"] == entry["value"]
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(short_run),
                "--out",
                str(tmp_path / "none"),
                "--metrics",
                "fad_published",
                "--fad-published-dir",
                str(tmp_path / "eval"),
                "--num-samples",
                "8",
                "--data-root",
                data_root,
            ]
        )
        == 0
    )
    refused = json.loads((tmp_path / "none" / "metrics.json").read_text())["fad_published"]
    assert refused["value"] is None and "stat_checkpoints/fashion_64.pth" in refused["refused"]


# --- FID in clean-fid's protocol, against clean-fid 0.1.35 itself -------------------------------------


def _foolbox_cifar():
    """foolbox's 20 real CIFAR-10 test images (colour) as uint8 (N, 3, 32, 32), when foolbox is installed."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        return None
    files = sorted((Path(list(spec.submodule_search_locations)[0]) / "data").glob("cifar10_*.png"))
    return (
        torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
        if files
        else None
    )


def test_clean_resize_matches_clean_fid_on_real_images(data_root):
    from cleanfid.resize import make_resizer

    from esvae.metrics.clean_fid import clean_resize

    resize = make_resizer("PIL", False, "bicubic", (299, 299))
    grey = load_split("fashion", "test", data_root).images[:6]
    sets = [(grey, lambda im: np.repeat(im.permute(1, 2, 0).numpy(), 3, axis=2))]
    colour = _foolbox_cifar()
    if colour is not None:
        sets.append((colour[:6], lambda im: im.permute(1, 2, 0).numpy()))
    for images, to_hwc in sets:
        ours = clean_resize(images).numpy()
        theirs = np.stack([resize(to_hwc(im)) for im in images]).transpose(0, 3, 1, 2)
        assert ours.shape == theirs.shape == (images.shape[0], 3, 299, 299) and ours.dtype == np.float32
        assert np.abs(ours - theirs).max() <= 1e-3
        assert ours.min() >= 0 and ours.max() <= 255 and not np.allclose(ours, ours.round())  # float, not re-quantised


def test_pool3_on_299_images_equals_torch_fidelity(offline_inception, data_root):
    from esvae.metrics.clean_fid import Pool3
    from esvae.metrics.inception import resolve_inception_weights

    pool3 = Pool3(resolve_inception_weights())
    images = F.interpolate(load_split("fashion", "test", data_root).images[:2].float(), size=299, mode="nearest")
    images = images.round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    assert torch.equal(pool3(images.float()), pool3.network(images)[0])  # torch-fidelity's own path, at 299x299


@pytest.mark.workflow  # end to end (a whole command, real data or subprocesses): the long lane
def test_fid_clean_equals_clean_fids_compute_fid_with_our_inception(offline_inception, data_root, tmp_path):
    """clean-fid's generator path (float images on the 0-255 scale, as the ESVAE authors called it)
    against a folder of real uint8 test images, with our Inception as its feature extractor."""
    from cleanfid import fid as cleanfid_fid
    from PIL import Image

    from esvae.metrics.clean_fid import Pool3, fid_clean, to_255
    from esvae.metrics.inception import resolve_inception_weights

    weights = resolve_inception_weights()
    test = load_split("fashion", "test", data_root).images
    generated = (test[:20].float() / 127.5 - 1) * 0.9 + 0.013  # model-range, off the uint8 grid
    reference = test[500:520]
    ours = fid_clean(to_255(generated), reference, weights, batch_size=20)
    (tmp_path / "ref").mkdir()
    for i, image in enumerate(reference):
        Image.fromarray(image[0].numpy()).save(tmp_path / "ref" / f"{i:03d}.png")
    as_255 = to_255(generated).repeat(1, 3, 1, 1)
    theirs = cleanfid_fid.compute_fid(
        gen=lambda z: as_255[: z.shape[0]],
        fdir2=str(tmp_path / "ref"),
        mode="clean",
        custom_feat_extractor=Pool3(weights),
        num_gen=20,
        batch_size=20,
        z_dim=2,
        num_workers=0,
        device=torch.device("cpu"),
        verbose=False,
    )
    assert ours == pytest.approx(theirs, rel=1e-6) and ours > 0
    # rounding the generated images first (a uint8 detour) is a different number: the float path matters
    from esvae.metrics.fidelity import to_uint8

    assert fid_clean(to_uint8(generated), reference, weights, batch_size=20) != pytest.approx(ours, rel=1e-6)
    # The reference statistics are cached under their name (which the caller derives from the images'
    # hash) and read back; an unreadable cache file is recomputed, not trusted.
    cached = fid_clean(to_255(generated), reference, weights, batch_size=20, reference_name="t", cache_dir=tmp_path)
    cache = tmp_path / "clean-fid" / "t-clean-pil-bicubic-299.pt"
    assert cache.is_file() and cached == pytest.approx(ours, rel=1e-9)
    assert fid_clean(
        to_255(generated), test[900:920], weights, batch_size=20, reference_name="t", cache_dir=tmp_path
    ) == pytest.approx(ours, rel=1e-9)  # read back, not recomputed
    cache.write_bytes(b"broken")
    assert fid_clean(
        to_255(generated), reference, weights, batch_size=20, reference_name="t", cache_dir=tmp_path
    ) == pytest.approx(ours, rel=1e-9)


def test_preset_key_names_the_authors_folder(tmp_path):
    from esvae.errors import ConfigError
    from esvae_pipeline import grid

    with pytest.raises(ConfigError, match=r"evaluate.fad_published_dir: .*none is not a folder"):
        grid.resolve_config({"preset": "smoke", "evaluate": {"fad_published_dir": str(tmp_path / "none")}})
    (tmp_path / "m" / "stat_checkpoints").mkdir(parents=True)
    (tmp_path / "m" / "stat_checkpoints" / "fashion_64.pth").write_bytes(b"x")
    config = grid.resolve_config({"preset": "smoke", "evaluate": {"fad_published_dir": str(tmp_path / "m")}})
    # only the files that exist become inputs (the stats file is missing: the evaluation records a refusal)
    assert grid.published_fad_inputs(config, "fashion") == [str(tmp_path / "m" / "stat_checkpoints" / "fashion_64.pth")]
    assert grid.published_fad_args(config) == f"--fad-published-dir {tmp_path / 'm'}"
    assert grid.published_fad_inputs(grid.resolve_config({"preset": "smoke"}), "fashion") == []
