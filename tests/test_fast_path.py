"""The fast path (fused tdBN + LIF op, compiled CPU kernels, torch-op sweeps, the readout reordering,
the first layer run once) against step-by-step references: identical spikes, equal gradients."""

from __future__ import annotations

import json

import pytest
import torch

import esvae
from esvae.spiking import LIF, TDBatchNorm, kernels, lif_multistep_reference
from esvae.spiking.layers import tdbn_lif
from esvae_bench import build_pair, check_numerics, peak_memory_bytes
from esvae_bench.naive import NaiveLIF

BACKENDS = ["numba", "torch-ops"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == "torch-ops":
        monkeypatch.setenv("ESVAE_NO_NUMBA", "1")
    else:
        monkeypatch.delenv("ESVAE_NO_NUMBA", raising=False)
        assert kernels.usable(torch.zeros(1), LIF().surrogate), "numba kernels unavailable: is numba installed?"
    return request.param


def _currents(T, shape=(3, 5, 4), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, *shape, generator=g, dtype=dtype) * 0.6 + 0.1


@pytest.mark.parametrize("T", [1, 2, 5, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 5, 4), (3, 7)])
def test_kernels_match_the_step_by_step_reference(T, dtype, shape):
    """The compiled LIF kernels (currents x * scale + shift formed inside) against the autograd
    loop of lif_step on the same currents: the same spikes, the same dL/dI."""
    x = _currents(T, shape, dtype=dtype).flatten(0, 1)  # (T*N, C, ...)
    channels = x.shape[1]
    scale = torch.linspace(0.5, 1.5, channels, dtype=dtype)
    shift = torch.linspace(-0.1, 0.2, channels, dtype=dtype)
    view = (1, -1) + (1,) * (x.dim() - 2)
    currents = (x * scale.view(view) + shift.view(view)).unflatten(0, (T, -1)).requires_grad_()
    g = torch.randn(currents.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ref = lif_multistep_reference(currents)
    (grad_ref,) = torch.autograd.grad(ref, currents, g)
    spikes = kernels.lif_forward(x, scale, shift, T, 0.25, 0.2)
    assert spikes.dtype == dtype and torch.equal(spikes, ref)
    assert 0 < spikes.mean() < 1  # some units fire, some do not
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    grad = kernels.lif_backward(x, g, scale, shift, T, 0.25, 0.2)
    torch.testing.assert_close(grad, grad_ref.flatten(0, 1), rtol=0, atol=tol)
    # an expanded (stride-0 over time) gradient, as the mean over T produces
    g1 = g[:1].expand_as(g)
    (grad_ref1,) = torch.autograd.grad(lif_multistep_reference(currents), currents, g1)
    torch.testing.assert_close(
        kernels.lif_backward(x, g1, scale, shift, T, 0.25, 0.2), grad_ref1.flatten(0, 1), rtol=0, atol=tol
    )


def test_channel_sums_and_batch_norm_gradient_kernels():
    for shape in [(6, 3, 5, 7), (9, 4)]:
        a = torch.randn(shape, generator=torch.Generator().manual_seed(8))
        b = torch.randn(shape, generator=torch.Generator().manual_seed(9))
        dims = [0] + list(range(2, a.dim()))
        expected = torch.stack([a.double().sum(dims), (a.double() * b.double()).sum(dims)], 1)
        torch.testing.assert_close(kernels.channel_sums(a, b), expected, rtol=1e-12, atol=1e-12)
        coef = torch.randn(shape[1], 4, generator=torch.Generator().manual_seed(10))
        view = (1, -1) + (1,) * (a.dim() - 2)
        want = (a - coef[:, 0].view(view) - (b - coef[:, 1].view(view)) * coef[:, 2].view(view)) * coef[:, 3].view(view)
        torch.testing.assert_close(kernels.batch_norm_grad_(a.clone(), b, coef), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_and_readout_kernels_equal_the_contiguous_ones(dtype):
    """The kernels on NHWC-stored input give the contiguous kernels' values, stored NHWC; the readout
    kernels equal sum_t w_t o_t of the plain ones and the plain backward fed w_t * grad; the sums
    from the backward pass equal channel_sums(dL/dI, x); none depends on the thread count."""
    T, n, c, h, w = 4, 3, 5, 4, 6
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(T * n, c, h, w, generator=gen, dtype=dtype) * 0.8 + 0.2
    scale = torch.linspace(0.5, 1.5, c, dtype=dtype)
    shift = torch.linspace(-0.1, 0.2, c, dtype=dtype)
    grad = torch.randn(T, n, c, h, w, generator=gen, dtype=dtype)
    weights = 0.8 ** torch.arange(T - 1, -1, -1, dtype=dtype)
    spikes = kernels.lif_forward(x, scale, shift, T, 0.25, 0.2)
    dI, sums = kernels.lif_backward(x, grad, scale, shift, T, 0.25, 0.2, sums=True)
    assert 0 < spikes.mean() < 1
    torch.testing.assert_close(sums, kernels.channel_sums(dI, x), rtol=1e-12, atol=1e-12)
    xl = x.contiguous(memory_format=torch.channels_last)
    spikes_l = kernels.lif_forward(xl, scale, shift, T, 0.25, 0.2)
    assert torch.equal(spikes_l, spikes) and spikes_l.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    dI_l, sums_l = kernels.lif_backward(
        xl, grad.contiguous(memory_format=torch.contiguous_format), scale, shift, T, 0.25, 0.2, sums=True
    )
    assert torch.equal(dI_l, dI) and kernels.channels_last(dI_l)
    torch.testing.assert_close(sums_l, sums, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kernels.channel_sums(xl, xl), kernels.channel_sums(x, x), rtol=1e-12, atol=1e-12)
    coef = torch.randn(c, 4, generator=gen, dtype=torch.float64)
    want = kernels.batch_norm_grad_(dI.clone(), x, coef)
    got = kernels.batch_norm_grad_(dI_l.clone(), xl, coef)
    assert kernels.channels_last(got) and torch.equal(got, want)
    for layout in (x, xl):
        mixed = kernels.lif_forward_readout(layout, scale, shift, weights, T, 0.25, 0.2)
        torch.testing.assert_close(
            mixed,
            torch.tensordot(weights, spikes, dims=([0], [0])),
            rtol=0,
            atol=1e-6 if dtype == torch.float32 else 1e-15,
        )
        gm = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(13), dtype=dtype)
        via_readout, s_r = kernels.lif_backward(layout, gm, scale, shift, T, 0.25, 0.2, readout=weights, sums=True)
        full, s_f = kernels.lif_backward(
            layout, weights.view(-1, 1, 1, 1, 1) * gm, scale, shift, T, 0.25, 0.2, sums=True
        )
        assert torch.equal(via_readout, full)
        torch.testing.assert_close(s_r, s_f, rtol=1e-12, atol=1e-12)
    threads, channel_sums_l = torch.get_num_threads(), kernels.channel_sums(xl, xl)
    try:
        torch.set_num_threads(1)
        assert torch.equal(kernels.lif_backward(xl, grad, scale, shift, T, 0.25, 0.2, sums=True)[1], sums_l)
        assert torch.equal(kernels.channel_sums(xl, xl), channel_sums_l)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("T", [1, 3])
def test_an_input_repeated_over_time_is_the_same_as_its_copy(backend, T):
    """tdbn_lif(y, repeated=True) (y read T times, never copied) equals tdbn_lif on y repeated T
    times: spikes, running statistics, and y's gradient (the sum over steps), in float64."""
    from esvae.spiking.layers import _repeat

    torch.manual_seed(0)
    bn_a, bn_b = TDBatchNorm(3, alpha=2.0).double(), TDBatchNorm(3, alpha=2.0).double()
    y = (torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2).contiguous(memory_format=torch.channels_last)
    g = torch.randn(T, 4, 3, 5, 5, dtype=torch.float64)
    ya, yb = y.clone().requires_grad_(), y.clone().requires_grad_()
    # as the first layer calls it (T > 1); with T = 1 a repeated input is the plain one, which consuming would overwrite
    a = tdbn_lif(ya, bn_a, LIF(), T, consume_input=T > 1, repeated=True)
    b = tdbn_lif(_repeat(yb, T), bn_b, LIF(), T)
    assert torch.equal(a, b) and 0 < a.mean() < 1
    (ga,) = torch.autograd.grad(a, ya, g)
    (gb,) = torch.autograd.grad(b, yb, g)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)
    assert torch.equal(ya.detach(), y)  # the caller's input is left as it was
    torch.testing.assert_close(bn_a.running_var, bn_b.running_var, rtol=1e-12, atol=1e-12)
    assert "decay=0.8" in repr(esvae.spiking.MembraneReadout(0.8))


def test_transposed_convolution_gradients_equal_autograd():
    """The channels-last transposed convolution (its weight gradient taken as the equivalent
    convolution's) against autograd through F.conv_transpose2d on contiguous tensors, float64."""
    import torch.nn.functional as F

    from esvae.spiking import SpikingConvTranspose2d

    torch.manual_seed(0)
    layer = SpikingConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, bn_alpha=None).double()
    x = (torch.rand(5, 6, 7, 7, dtype=torch.float64) < 0.3).double()
    g = torch.randn(5, 4, 14, 14, dtype=torch.float64)
    xl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = layer._weights_forward(xl)
    assert out.grad_fn is not None and "SpikeConvolution" in type(out.grad_fn).__name__
    got = torch.autograd.grad(out, [xl, layer.weight, layer.bias], g)
    xr = x.clone().requires_grad_()
    ref_out = F.conv_transpose2d(xr, layer.weight, layer.bias, 2, 1, 1)
    want = torch.autograd.grad(ref_out, [xr, layer.weight, layer.bias], g)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_recomputed_currents_are_batch_norm_and_deterministic():
    """The fused op takes its training-mode currents from x * scale + shift with the batch
    statistics, in forward and again in backward: equal to native batch norm up to rounding, and
    the same bits every time (so backward replays the forward's membrane potentials exactly)."""
    from esvae.spiking.layers import _TDBNThenLIF

    for shape in [(64, 32, 8, 8), (256, 40)]:
        bn = TDBatchNorm(shape[1], alpha=2.0)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 3 + 1
        native, mean, invstd = torch.ops.aten.native_batch_norm(
            x, bn.weight * 0.4, bn.bias, None, None, True, 0.0, 1e-5
        )
        first = _TDBNThenLIF._currents(x, bn.weight, bn, mean, invstd, bn.bias)
        assert torch.equal(first, _TDBNThenLIF._currents(x, bn.weight, bn, mean, invstd, bn.bias))
        torch.testing.assert_close(first, native, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("T", [1, 4, 7])
@pytest.mark.parametrize("shape,layout", [((5, 6), None), ((5, 3, 4, 4), None), ((5, 3, 4, 4), "channels_last")])
@pytest.mark.parametrize("training", [True, False])
def test_fused_tdbn_lif_matches_batch_norm_then_reference_lif(backend, T, shape, layout, training):
    torch.manual_seed(0)
    bn_fast, bn_ref = TDBatchNorm(shape[1], alpha=2.0), TDBatchNorm(shape[1], alpha=2.0)
    with torch.no_grad():
        for bn in (bn_fast, bn_ref):
            bn.weight.copy_(torch.linspace(0.5, 1.5, shape[1]))
            bn.bias.copy_(torch.linspace(-0.2, 0.3, shape[1]))
            bn.running_mean.fill_(0.1)
            bn.running_var.fill_(2.0)
    bn_fast.train(training), bn_ref.train(training)
    x = torch.randn(T * shape[0], *shape[1:], generator=torch.Generator().manual_seed(4)) * 2
    if layout == "channels_last":  # as the convolutions hand it over: stored NHWC
        x = x.contiguous(memory_format=torch.channels_last)
        assert kernels.channels_last(x)
    x.requires_grad_()
    g = torch.randn(T, *shape, generator=torch.Generator().manual_seed(5))
    fast = tdbn_lif(x, bn_fast, LIF(), T)
    ref = lif_multistep_reference(bn_ref(x).unflatten(0, (T, -1)))
    assert torch.equal(fast, ref) and 0 < ref.mean() < 1
    for grad_out in (g, g[:1].expand_as(g)):  # a full gradient, and a stride-0 one (as a mean over T gives)
        grads_fast = torch.autograd.grad(fast, [x, bn_fast.weight, bn_fast.bias], grad_out, retain_graph=True)
        grads_ref = torch.autograd.grad(ref, [x, bn_ref.weight, bn_ref.bias], grad_out, retain_graph=True)
        for a, b in zip(grads_fast, grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # only the batch norm's parameters need a gradient (a first layer fed by images)
    (w_fast,) = torch.autograd.grad(tdbn_lif(x.detach(), bn_fast, LIF(), T), [bn_fast.weight], g)
    (w_ref,) = torch.autograd.grad(
        lif_multistep_reference(bn_ref(x.detach()).unflatten(0, (T, -1))), [bn_ref.weight], g
    )
    torch.testing.assert_close(w_fast, w_ref, rtol=1e-5, atol=1e-6)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn_fast, name), getattr(bn_ref, name))


@pytest.mark.parametrize("model_name", ["esvae", "fsvae"])
def test_reading_out_before_the_last_layer_changes_nothing(model_name):
    # float64: the two orders of summation agree to rounding, and no membrane sits within rounding of V_th
    model = esvae.build_model(model_name, "fashion", timesteps=4).double()
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 2 - 1
    outs, grads = [], []
    for readout_first in (True, False):
        model.readout_first = readout_first
        model.zero_grad()
        out = model(x, torch.Generator().manual_seed(7))
        model.loss(x, out)["loss"].backward()
        outs.append(out.reconstruction.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    assert grads[0].keys() == grads[1].keys() and "final_layer.1.bias" in grads[0]
    scale = max(float(g.abs().max()) for g in grads[1].values())
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-12 * scale, msg=name)


@pytest.mark.parametrize("model_name", ["esvae", "fsvae"])
@pytest.mark.parametrize("T", [1, 4, 16])
def test_models_equal_the_naive_step_by_step_port(backend, model_name, T):
    """The whole network (first layer once, fused tdBN + LIF, readout first, FSVAE's stepwise
    evaluation) against the time-last port with the slice-writing LIF loop, in float64."""
    pair = build_pair(model_name, "fashion", T, batch=4)
    report = check_numerics(pair)
    strict = report["float64"]
    assert report["ok"], strict
    assert strict["spike_mismatches"] == 0 and strict["spikes_compared"] > 0
    assert strict["grad_max_rel_err"] < 1e-9 and strict["eval_output_std"] > 0.01


def test_the_numerics_check_catches_a_wrong_neuron(monkeypatch):
    pair = build_pair("esvae", "fashion", 3, batch=4)
    original = NaiveLIF.forward

    def leakier(self, x):  # tau 0.3 instead of 0.25
        self.tau = 0.3
        return original(self, x)

    monkeypatch.setattr(NaiveLIF, "forward", leakier)
    report = check_numerics(pair)
    assert not report["ok"] and report["float64"]["spike_mismatches"] > 0


def test_the_numerics_check_catches_a_wrong_gradient(monkeypatch):
    """Same spikes, a different surrogate window in the naive port: only gradients differ."""
    import esvae_bench.naive as naive_module

    pair = build_pair("esvae", "fashion", 3, batch=4)
    monkeypatch.setattr(naive_module, "rectangle", lambda u: (u.abs() < 0.4).to(u.dtype))
    report = check_numerics(pair)
    strict = report["float64"]
    assert not report["ok"] and strict["spike_mismatches"] == 0 and strict["grad_max_rel_err"] > 1e-3


def test_tdbn_refuses_a_cumulative_momentum():
    with pytest.raises(ValueError, match="numeric momentum"):
        TDBatchNorm(4, momentum=None)


def test_kernels_keep_torch_thread_count():
    """A fresh process (numba's thread pool not yet started) with torch on 1 thread stays on 1 after
    the first kernel call: starting numba's OpenMP pool must not change torch's thread count."""
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1); from esvae.spiking import kernels; "
        "kernels.lif_forward(torch.randn(4, 3, 5), torch.ones(3), torch.zeros(3), 2, 0.25, 0.2); "
        "print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1"


def test_a_second_process_compiles_no_kernel():
    """Numba's on-disk cache serves every kernel to a fresh process: of two processes that run both
    models' training, evaluation and generation (float32 and float64), the second saves nothing to
    the cache (a kernel whose cache key changed from process to process was compiled by each, about
    9 s a process, and its cache grew by a file each time)."""
    import os
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from esvae_bench import build_pair\n"
        "for model in ('esvae', 'fsvae'):\n"
        "    for dtype in (torch.float32, torch.float64):\n"
        "        p = build_pair(model, 'fashion', 2, 4)\n"
        "        p.ours.to(dtype); p.images = p.images.to(dtype)\n"
        "        p.optimizers['ours'] = torch.optim.AdamW(p.ours.parameters())\n"
        "        for mode in ('train', 'eval', 'sample'):\n"
        "            p.call('ours', mode)()\n"
    )
    env = dict(os.environ, NUMBA_DEBUG_CACHE="1")
    env.pop("ESVAE_NO_NUMBA", None)
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert "data loaded from" in runs[1].stdout
    saved = [line for line in runs[1].stdout.splitlines() if "saved to" in line]
    assert saved == [], saved[:3]


def test_no_kernel_keeps_a_compiled_function_in_its_closure():
    """The structural reason for the test above, for every kernel whether or not a small run reaches
    it: a compiled function in a kernel's closure pickles with a per-process id, which changes the
    kernel's cache key (numba hashes the pickled closure)."""
    import numba.core.dispatcher

    from esvae.spiking import spike_conv

    compiled = [k for k in (*kernels._kernels(), *spike_conv._kernels())]
    assert len(compiled) >= 15
    for kernel in compiled:
        cells = kernel.py_func.__closure__ or ()
        inside = [c.cell_contents for c in cells if isinstance(c.cell_contents, numba.core.dispatcher.Dispatcher)]
        assert inside == [], (kernel.py_func.__name__, inside)


def test_peak_memory_counts_live_allocations():
    def work():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(2_000_000)  # 8 MB: 12 MB held
        del a
        c = torch.empty(500_000)  # 2 MB: 10 MB held
        return b, c

    peak = peak_memory_bytes(work)
    assert 12_000_000 <= peak < 12_000_000 + 4096


def test_the_training_step_is_the_one_esvae_train_runs(monkeypatch):
    import esvae.train as train_module

    calls = []
    original = train_module.train_step

    def counting(model, optimizer, images, generator):
        calls.append(type(model).__name__)
        return original(model, optimizer, images, generator)

    monkeypatch.setattr(train_module, "train_step", counting)
    pair = build_pair("esvae", "fashion", 2, batch=2)
    _, terms = pair.call("ours", "train")()
    pair.call("naive", "train")()
    assert calls == ["ESVAE", "NaiveESVAE"] and torch.isfinite(terms["loss"])
    # and that step runs the fused op in every tdBN + LIF layer of the model
    out = pair.ours(pair.images)
    nodes, stack, seen = [], [out.reconstruction.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nodes.append(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    layers_with_bn_and_lif = sum(
        1 for m in pair.ours.modules() if getattr(m, "bn", None) is not None and getattr(m, "lif", None) is not None
    )
    assert nodes.count("_TDBNThenLIFBackward") == layers_with_bn_and_lif == 10


@pytest.mark.workflow  # end to end (a whole command, real data or subprocesses): the long lane
def test_bench_command_writes_a_checked_report(tmp_path, capsys):
    """The README's quick benchmark command (with a temporary report path and one thread)."""
    import re
    import shlex
    from pathlib import Path

    from esvae_bench.cli import main

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (command,) = re.findall(r"^\.venv/bin/python -m esvae_bench --timesteps 2 .*$", readme, flags=re.M)
    out = tmp_path / "bench.json"
    rc = main(shlex.split(command)[3:] + ["--threads", "1", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["numerics_ok"] and report["machine"]["torch_threads"] == 1
    assert [(r["model"], r["timesteps"]) for r in report["rows"]] == [("esvae", 2), ("fsvae", 2)]
    for row in report["rows"]:
        for allocator in ("default", "tuned"):
            for mode in ("train", "eval", "sample"):
                s = row["seconds"][allocator]
                assert row["images_per_s"][allocator]["ours"][mode] == pytest.approx(4 / s["ours"][mode])
                assert row["speedup"][allocator][mode] == pytest.approx(s["naive"][mode] / s["ours"][mode])
        assert row["memory_ratio"]["train"] == pytest.approx(
            row["peak_bytes"]["ours"]["train"] / row["peak_bytes"]["naive"]["train"]
        )
        for allocator in ("default", "tuned"):  # peak resident memory, a fresh process per measurement
            hwm = {i: row["peak_rss_bytes"][allocator][i]["train"] for i in ("naive", "ours")}
            assert all(v["vmhwm_bytes"] >= v["rss_before_bytes"] > 100 * 2**20 for v in hwm.values())
            assert row["rss_ratio"][allocator]["train"] == pytest.approx(
                hwm["ours"]["vmhwm_bytes"] / hwm["naive"]["vmhwm_bytes"]
            )
        for mode in ("train", "eval", "sample"):
            bound = report["machine"]["dense_flops_per_second"] / row["flops_per_image"][mode]
            assert row["flop_bound_images_per_s"][mode] == pytest.approx(bound)
            assert row["fraction_of_flop_bound"][mode] == pytest.approx(
                row["images_per_s"]["tuned"]["ours"][mode] / bound
            )
        assert row["flops_per_image"]["train"] > 2 * row["flops_per_image"]["eval"]  # backward: about twice forward
        spikes = row["spike_inputs"][
            "train"
        ]  # 7 convolutions on spikes (all but the first); 1 for the readout-first tconv: none
        assert spikes["convolutions_on_spikes"] == 7 and 0 <= spikes["spike_driven"] <= 7
        assert 0 < spikes["firing_rate"] < 1
    table = capsys.readouterr().out
    assert "| esvae | 2 | train |" in table and "| fsvae | 2 | sample |" in table and "same: 0 spikes differ" in table
    assert "Peak resident memory (VmHWM" in table and "FLOP bound of esvae T=2" in table
    assert "Convolutions on spikes, esvae T=2: train" in table


def test_bench_refuses_an_unavailable_device(monkeypatch, capsys):
    from esvae_bench.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--device", "cuda", "--timesteps", "2"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_kernels_do_not_depend_on_the_block_size(monkeypatch, dtype):
    """The backward kernels take each image a block of elements at a time: any block size (one that
    leaves a ragged last block, one element, a whole image) gives the same bits; the in-place form's
    two passes equal lif_backward's sums and batch norm's input gradient over its output, bit for
    bit, for an input of T steps and for one repeated over time (the steps' gradients summed)."""
    T, n, c, h, w = 5, 3, 5, 4, 6  # 120 elements per image
    gen = torch.Generator().manual_seed(21)
    x = (torch.randn(T * n, c, h, w, generator=gen, dtype=dtype) * 0.8 + 0.2).contiguous(
        memory_format=torch.channels_last
    )
    y = x[:n].clone(memory_format=torch.channels_last)  # one input for every step
    scale = torch.linspace(0.5, 1.5, c, dtype=dtype)
    shift = torch.linspace(-0.1, 0.2, c, dtype=dtype)
    grad = torch.randn(T, n, c, h, w, generator=gen, dtype=dtype)
    coef = torch.randn(c, 4, generator=gen, dtype=torch.float64)

    def run():
        dI, sums = kernels.lif_backward(x, grad, scale, shift, T, 0.25, 0.2, sums=True)
        passes = kernels.InPlaceBackward(x.clone(memory_format=torch.channels_last), grad, scale, shift, T, 0.25, 0.2)
        sums_ip = passes.sums()
        rep = kernels.InPlaceBackward(y, grad, scale, shift, T, 0.25, 0.2, repeated=True)
        return dI, sums, sums_ip, passes.apply(coef), rep.sums(), rep.apply(coef)

    dI, sums, sums_ip, dx, sums_rep, dy = want = run()
    assert torch.equal(sums_ip, sums) and (dI != 0).float().mean() > 0.2
    assert torch.equal(dx, kernels.batch_norm_grad_(dI.clone(), x, coef))
    repeated = y.unsqueeze(0).expand(T, *y.shape).flatten(0, 1).contiguous(memory_format=torch.channels_last)
    dI_rep, s_rep = kernels.lif_backward(repeated, grad, scale, shift, T, 0.25, 0.2, sums=True)
    torch.testing.assert_close(sums_rep, s_rep, rtol=1e-12, atol=1e-12)
    steps = kernels.batch_norm_grad_(dI_rep, repeated, coef).unflatten(0, (T, n)).sum(0)
    torch.testing.assert_close(dy, steps, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)
    for block in (7, 1, 120, 10_000):
        monkeypatch.setattr(kernels, "BLOCK", block)
        for a, b in zip(run(), want):
            assert torch.equal(a, b), block
