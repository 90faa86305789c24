"""Shared fixtures: one Fashion-MNIST data root and one offline Inception conversion per session."""
import os

import pytest
import torch


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """``$ESVAE_DATA`` when set, else a session folder (Fashion-MNIST unpacked there once)."""
    return os.environ.get("ESVAE_DATA") or str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def inception_cache(tmp_path_factory):
    """A cache folder holding the offline Inception weights, converted once per session."""
    from esvae.metrics.inception import resolve_inception_weights
    cache = tmp_path_factory.mktemp("esvae-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ESVAE_INCEPTION_WEIGHTS", raising=False)
        mp.setattr(torch.hub, "get_dir", lambda: str(cache / "no-hub"))
        resolve_inception_weights(cache_dir=cache)
    return cache


@pytest.fixture
def offline_inception(inception_cache, monkeypatch):
    """Isolate a test from any official weights on this machine: only the offline conversion is found."""
    monkeypatch.delenv("ESVAE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("ESVAE_CACHE", str(inception_cache))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(inception_cache / "no-hub"))
    return inception_cache


@pytest.fixture(scope="session")
def fad_autoencoder(tmp_path_factory, data_root):
    """A quickly trained Fashion-MNIST FAD autoencoder (CLI), statistics over test[:2000]."""
    from esvae.cli import main
    out = tmp_path_factory.mktemp("fad")
    assert main(["train-fad-autoencoder", "--dataset", "fashion", "--out", str(out), "--epochs", "2",
                 "--train-subset", "512", "--test-subset", "2000", "--batch-size", "64", "--data-root", data_root]) == 0
    return out
