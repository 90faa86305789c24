"""The sampling-cost helper: batching, warm-up, median and labels, with a fake clock."""

import pytest
import torch
from torch import nn

import esvae
from esvae.metrics import time_sampling


class _FakeModel(nn.Module):
    """sample(b) 'takes' a known time on a fake clock; records the calls and their generators."""

    def __init__(self, per_image, extra):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.now, self.per_image, self.extra, self.calls = 0.0, per_image, list(extra), []

    def clock(self):
        return self.now

    def sample(self, n, generator=None):
        self.calls.append((n, generator.initial_seed(), self.training))
        self.now += self.per_image * n + (self.extra.pop(0) if self.extra and len(self.calls) > 1 else 0.0)
        return torch.zeros(n, 1, 2, 2)


def test_batches_warmup_and_median_on_a_fake_clock():
    fake = _FakeModel(0.01, extra=[0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    fake.train()
    cost = time_sampling(fake, n=10, batch_size=4, repeats=3, warmup=1, seed=7, clock=fake.clock)
    assert fake.training  # the caller's mode is restored
    assert [c[0] for c in fake.calls] == [4] + [4, 4, 2] * 3  # one warm-up batch, then n in 3 calls
    assert {c[1:] for c in fake.calls} == {(7, False)}  # seeded generator, eval mode
    # Repeats take 0.1 + 0.5 (the slow call), 0.1, 0.1 s: the median ignores the outlier.
    assert cost.seconds_all == pytest.approx([0.6, 0.1, 0.1])
    assert cost.seconds == pytest.approx(0.1)
    assert cost.images_per_second == pytest.approx(100.0) and cost.milliseconds_per_image == pytest.approx(10.0)
    assert cost.to_dict()["images_per_second"] == pytest.approx(100.0)
    assert "10.000 ms/image" in cost.label() and "n=10 in batches of 4 on cpu" in cost.label()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"n": 0}, "n must be a positive integer"),
        ({"n": 4, "batch_size": 0}, "batch_size must be a positive integer"),
        ({"n": 4, "repeats": 0}, "repeats must be a positive integer"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        time_sampling(_FakeModel(0.01, []), **kwargs)


@pytest.mark.parametrize("name", ["esvae", "fsvae", "taid", "ann_vae"])
def test_each_model_is_timed_generating_n_images(name, monkeypatch):
    overrides = {} if name == "ann_vae" else {"timesteps": 2}
    model = esvae.build_model(name, "fashion", **overrides)
    shapes = []
    original = model.sample
    monkeypatch.setattr(
        model, "sample", lambda n, generator=None: shapes.append(original(n, generator=generator).shape)
    )
    cost = time_sampling(model, n=5, batch_size=3, repeats=1, warmup=0)
    assert shapes == [(3, 1, 32, 32), (2, 1, 32, 32)]
    assert (
        cost.model == name and cost.setting == "fashion" and cost.timesteps == overrides.get("timesteps", 1)
    )  # the ANN reports T=1
    assert cost.seconds > 0 and f"{name} (fashion" in cost.label()
