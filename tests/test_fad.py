"""FAD: the autoencoder's shapes and training record, and the distance on real data."""

import pytest
import torch

from esvae.data import load_split, to_model_range
from esvae.errors import CheckpointError
from esvae.metrics.fad import (
    FADAutoencoder,
    encode_all,
    fad,
    fad_autoencoder_config,
    fad_code_dim,
    load_fad_autoencoder,
    train_fad_autoencoder,
)
from esvae.metrics.frechet import GaussianStats, frechet_distance


def test_code_sizes_and_shapes():
    assert fad_code_dim("mnist") == fad_code_dim("fashion") == 64
    assert fad_code_dim("cifar10") == fad_code_dim("celeba") == 128
    small, large = FADAutoencoder(fad_autoencoder_config("fashion")), FADAutoencoder(fad_autoencoder_config("celeba"))
    assert small(torch.zeros(2, 1, 32, 32)).reconstruction.shape == (2, 1, 32, 32) and small.encode(
        torch.zeros(2, 1, 32, 32)
    ).shape == (2, 64)
    assert large(torch.zeros(2, 3, 64, 64)).reconstruction.shape == (2, 3, 64, 64)
    assert large.encoder[-1][0].out_channels == 512
    with pytest.raises(ValueError, match=r"takes images \(N, 1, 32, 32\)"):
        small.encode(torch.zeros(2, 3, 32, 32))


def test_training_learns_and_stores_test_statistics(fad_autoencoder, data_root):
    model, record = load_fad_autoencoder(fad_autoencoder)  # a folder works; so does the file
    history = record["training"]["history"]
    assert history[-1]["test_mse"] < 0.7 * history[0]["test_mse"], history
    assert not model.training and record["code_dim"] == 64
    assert record["test_stats"]["n"] == 2000 and record["test_stats"]["split"] == "test[:2000]"
    test = load_split("fashion", "test", data_root).images[:2000]
    stored = GaussianStats(record["test_stats"]["mean"], record["test_stats"]["cov"], 2000)
    assert frechet_distance(GaussianStats.of(encode_all(model, test)), stored) == pytest.approx(0.0, abs=1e-6)
    # Other real test images score far closer than noise does.
    others = load_split("fashion", "test", data_root).images[5000:7000]
    real = fad(model, record, to_model_range(others))
    noise = fad(model, record, torch.rand(2000, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert real < 0.1 * noise, (real, noise)
    assert (fad_autoencoder / "metrics.json").is_file() and "test MSE" in (fad_autoencoder / "train.log").read_text()


def test_bad_autoencoder_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="FAD autoencoder not found.*train-fad-autoencoder"):
        load_fad_autoencoder(tmp_path / "none")
    torch.save({"format": "other"}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="is not a FAD autoencoder file"):
        load_fad_autoencoder(tmp_path / "x.pt")


def test_the_training_loop_trains_it_as_a_plain_adamw_loop_would(tmp_path, data_root):
    """The FAD autoencoder is trained by esvae.train.train (resume, logs, history for free); that must
    leave exactly the weights of the plain loop it replaced: seeded init, the same seeded batch order,
    MSE, AdamW(lr) with torch's defaults (betas 0.9/0.999, weight decay 0.01)."""
    import esvae
    from esvae.data import iterate_batches, seeded_subset

    summary = train_fad_autoencoder(
        "fashion", tmp_path, epochs=2, batch_size=64, train_subset=256, test_subset=64, seed=3, data_root=data_root
    )
    model, record = load_fad_autoencoder(tmp_path)
    assert summary["training"]["epochs"] == 2 and record["test_stats"]["split"] == "test[:64]"
    assert not (tmp_path / "autoencoder" / "samples.png").exists()  # not generative
    assert (tmp_path / "autoencoder" / "checkpoint.pt").is_file() and "fad_autoencoder" not in esvae.MODELS

    torch.manual_seed(3)
    plain = FADAutoencoder(fad_autoencoder_config("fashion"))
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-3)
    images = seeded_subset(load_split("fashion", "train", data_root), 256).images
    order = torch.Generator().manual_seed(3)
    for _ in range(2):
        for batch in iterate_batches(images, 64, shuffle=True, generator=order):
            loss = torch.nn.functional.mse_loss(plain(batch).reconstruction, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for name, value in plain.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
