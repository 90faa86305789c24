"""Probes: the perturbations' statistics, the linear probe, and a real run of both probes."""

import json
import math

import pytest
import torch

from esvae.cli import main
from esvae.probes import NOISE_LEVELS, flip_bits, linear_probe_accuracy, shuffle_time


def test_bit_flips_flip_a_fraction_a_of_bits():
    g = torch.Generator().manual_seed(0)
    spikes = (torch.rand(16, 200, 32, generator=g) < 0.3).float()
    n = spikes.numel()
    for a in NOISE_LEVELS:
        flipped = flip_bits(spikes, a, torch.Generator().manual_seed(1))
        assert set(flipped.unique().tolist()) <= {0.0, 1.0}
        fraction = (flipped != spikes).float().mean().item()
        assert abs(fraction - a) < 4 * math.sqrt(a * (1 - a) / n), (a, fraction)
        # Both kinds of bits flip: 0 -> 1 and 1 -> 0 at the same rate.
        assert abs(flipped[spikes == 1].eq(0).float().mean().item() - a) < 0.02
        assert abs(flipped[spikes == 0].eq(1).float().mean().item() - a) < 0.02


def test_time_shuffle_permutes_each_image_and_keeps_every_count():
    g = torch.Generator().manual_seed(2)
    spikes = (torch.rand(8, 50, 6, generator=g) < 0.4).float()
    spikes[:, :, 0] = torch.arange(8).view(8, 1).float()  # a time stamp in unit 0 reveals the permutation
    shuffled = shuffle_time(spikes, torch.Generator().manual_seed(3))
    torch.testing.assert_close(shuffled[:, :, 1:].sum(0), spikes[:, :, 1:].sum(0))  # counts kept per image and unit
    for n in range(50):
        order = shuffled[:, n, 0].long()
        assert sorted(order.tolist()) == list(range(8))  # a permutation of the steps
        assert torch.equal(shuffled[:, n, 1:], spikes[order, n, 1:])  # the same one for every unit
    orders = {tuple(shuffled[:, n, 0].long().tolist()) for n in range(50)}
    assert len(orders) > 40  # one per image, not shared


def test_linear_probe_separates_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(4)
    centres = torch.randn(3, 10, generator=g) * 3
    y_train, y_test = torch.randint(0, 3, (300,), generator=g), torch.randint(0, 3, (200,), generator=g)
    x_train = centres[y_train] + torch.randn(300, 10, generator=g)
    x_test = centres[y_test] + torch.randn(200, 10, generator=g)
    assert linear_probe_accuracy(x_train, y_train, x_test, y_test) > 0.95
    noise_acc = linear_probe_accuracy(
        torch.randn(300, 10, generator=g), y_train, torch.randn(200, 10, generator=g), y_test
    )
    assert noise_acc < 0.5


@pytest.fixture(scope="module")
def fsvae_run(tmp_path_factory, data_root):
    from esvae import MODELS
    from esvae.train import train

    cfg = MODELS["fsvae"].paper_train("fashion")
    cfg.epochs, cfg.batch_size, cfg.train_subset, cfg.test_subset = 1, 32, 512, 64
    out = tmp_path_factory.mktemp("fsvae")
    train(
        model_name="fsvae",
        dataset="fashion",
        out_dir=out,
        train_config=cfg,
        model_overrides={"timesteps": 4},
        data_root=data_root,
        device="cpu",
    )
    return out / "checkpoint.pt"


def test_probe_command_writes_tables_and_figures(fsvae_run, data_root, tmp_path, capsys):
    out = tmp_path / "probe"
    assert (
        main(
            [
                "probe",
                "--checkpoint",
                str(fsvae_run),
                "--out",
                str(out),
                "--train-subset",
                "500",
                "--test-subset",
                "100",
                "--data-root",
                data_root,
            ]
        )
        == 0
    )
    r = json.loads((out / "probes.json").read_text())
    lp = r["information_retention"]["linear_probe"]
    assert lp["n_train"] == 500 and lp["n_test"] == 100 and lp["test_split"] == "test[:100]" and 0 <= lp["value"] <= 1
    assert r["information_retention"]["mse_deterministic"]["n"] == 100
    rows = r["decoder_robustness"]["rows"]
    assert [x["condition"] for x in rows] == ["clean", "shuffled"] + [f"noise_{a:.2f}" for a in NOISE_LEVELS]
    assert rows[0]["increase"] == 0 and all(x["increase"] == pytest.approx(x["mse"] - rows[0]["mse"]) for x in rows)
    tsv = (out / "robustness.tsv").read_text().splitlines()
    assert tsv[0] == "condition\ta\tmse\tincrease" and len(tsv) == 9
    from PIL import Image

    with Image.open(out / "perturbations.png") as img:
        assert img.size == (8 * 34 + 2, 9 * 34 + 2)  # 8 images x (input, recon, shuffled, 6 noise levels)
    assert (out / "robustness.png").stat().st_size > 1000
    assert "linear probe accuracy" in capsys.readouterr().out


def test_ann_vae_probe_uses_mu_and_refuses_the_spike_perturbations(data_root, tmp_path):
    import esvae
    from esvae.data import load_split, to_model_range
    from esvae.probes import run_probes
    from esvae.train import train

    cfg = esvae.MODELS["ann_vae"].paper_train("fashion")
    cfg.epochs, cfg.train_subset, cfg.test_subset = 0, 64, 32  # an untrained checkpoint is enough here
    train(
        model_name="ann_vae",
        dataset="fashion",
        out_dir=tmp_path / "run",
        train_config=cfg,
        data_root=data_root,
        device="cpu",
        eval_at_init=False,
    )
    r = run_probes(
        tmp_path / "run" / "checkpoint.pt",
        tmp_path / "probe",
        train_subset=200,
        test_subset=40,
        data_root=data_root,
        device="cpu",
    )
    assert r["decoder_robustness"]["rows"] is None and "not a spike train" in r["decoder_robustness"]["refused"]
    assert r["information_retention"]["code"] == "posterior mean mu"
    model, _ = esvae.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert model.kld_weight == 1.0  # 64 images at batch 250: one batch per epoch, restored on load
    x = to_model_range(load_split("fashion", "test", data_root).images[:40])
    with torch.no_grad():
        expected = (model.eval().decode(model.encode(x)) - x).pow(2).mean().item()
    assert r["information_retention"]["mse_deterministic"]["value"] == pytest.approx(expected, rel=1e-5)
    assert not (tmp_path / "probe" / "robustness.tsv").exists()
