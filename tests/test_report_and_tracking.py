"""``python -m esvae_pipeline report`` on hand-made result files (golden means/stds, missing runs, bad files)
and the MLflow mirror (unreachable store, 8 concurrent jobs on one SQLite store)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from esvae.results import ResultFileError
from esvae_pipeline import grid
from esvae_pipeline.cli import main
from esvae_pipeline.report import compile_report
from esvae_pipeline.tracking import init_store, mirror

POINT = "fashion/esvae/poisson/T4/seed{seed}"


def write_run(results: Path, key: str, mse: float, fid: float, probe_acc: float, epochs=1, evaluated=True):
    run = results / "runs" / key
    p = grid.RunPoint.from_key(key)
    (run / "train").mkdir(parents=True)
    (run / "evaluate").mkdir(parents=True)
    (run / "probe").mkdir(parents=True)
    block = {"value": mse, "n": 128, "split": "test[:128]"}
    (run / "train" / "metrics.json").write_text(
        json.dumps(
            {
                "model": p.model,
                "dataset": p.dataset,
                "reconstruction_mse": block,
                "baseline_mean_image_mse": {"value": 0.3},
                "train_images": 256,
                "epochs": epochs,
                "parameters": 855905,
                "timesteps": p.timesteps,
            }
        )
    )
    (run / "train" / "history.tsv").write_text("epoch\tstep\ttest_mse\n0\t0\t0.9\n1\t8\t%g\n" % mse)
    (run / "train" / "config.json").write_text(
        json.dumps(
            {
                "model": p.model,
                "dataset": p.dataset,
                "model_config": {"timesteps": p.timesteps, "sampler": p.sampler},
                "train_config": {
                    "epochs": epochs,
                    "seed": p.seed,
                    "train_subset": 256,
                    "test_subset": 128,
                    "batch_size": 32,
                },
            }
        )
    )
    if evaluated:
        (run / "evaluate" / "metrics.json").write_text(
            json.dumps(
                {
                    "model": p.model,
                    "dataset": p.dataset,
                    "reconstruction_mse": block,
                    "kid": {"value": 0.5},
                    "fid": {"value": fid, "name": "FID@64", "n_reference": 64, "reference_split": "test[:64]"},
                    "fad": {"value": 1.0, "name": "FAD@64", "n_reference": 128, "reference_split": "test[:128]"},
                    "fid_clean": {
                        "value": fid + 7,
                        "name": "FID-clean@64",
                        "n_reference": 64,
                        "reference_split": "test[:64]",
                    },
                    "fad_published": {"value": 2.5, "name": "FAD@64", "label": "published AE 0123abcd, stats 4567ef01"},
                    "inception_score": {"value": None, "refused": "no classifier head"},
                    "parameters": {"total": 855905},
                    "spike_costs": {
                        "mean_firing_rate": 0.2,
                        "reconstruction_path": {"synops": 1e6, "macs": 3e5},
                        "split": "test[:100]",
                    },
                    "sampling_time": {"milliseconds_per_image": 2.0, "n": 64},
                }
            )
        )
    rows = [
        {"condition": "clean", "a": 0.0, "mse": mse},
        {"condition": "shuffled", "a": None, "mse": mse + 0.01},
        {"condition": "noise_0.05", "a": 0.05, "mse": mse + 0.02},
    ]
    (run / "probe" / "probes.json").write_text(
        json.dumps(
            {
                "model": p.model,
                "dataset": p.dataset,
                "information_retention": {
                    "linear_probe": {"value": probe_acc, "n_train": 256, "test_split": "test[:128]"},
                    "mse_sampled": {"value": mse},
                    "mse_deterministic": {"value": mse - 0.01},
                },
                "decoder_robustness": {"rows": rows},
            }
        )
    )


@pytest.fixture
def two_seed_results(tmp_path):
    config = grid.resolve_config({"preset": "smoke", "seeds": [0, 1]})
    results = tmp_path / "results"
    results.mkdir()
    (results / "config.json").write_text(json.dumps(config))
    write_run(results, POINT.format(seed=0), mse=0.10, fid=100.0, probe_acc=0.70)
    write_run(results, POINT.format(seed=1), mse=0.14, fid=110.0, probe_acc=0.80)
    return results


def test_table1_is_the_mean_and_std_over_seeds_next_to_the_paper(two_seed_results):
    compile_report(two_seed_results)
    table = pd.read_csv(two_seed_results / "tables" / "table1.csv")
    ours = table[table["source"] == "this run (smoke, N=128, seeds 0,1)"]
    assert list(ours["model"]) == ["ESVAE"]  # the only model with results
    row = ours.iloc[0]
    assert row["mse"] == pytest.approx(0.12) and row["mse_std"] == pytest.approx(math.sqrt(0.0008))  # ddof 1
    assert row["fid"] == pytest.approx(105.0) and row["fid_std"] == pytest.approx(math.sqrt(50.0))
    paper = table[table["source"].str.startswith("paper")]
    assert set(paper["model"]) == {"SWGAN", "SGAD", "ANN VAE", "FSVAE", "ESVAE"}  # Fashion-MNIST rows of Table I
    # The paper's FID was clean-fid's protocol and its FAD the authors' autoencoder's: they sit in those
    # columns, beside this run's values in the same protocols, never beside torch-fidelity's FID or our FAD.
    fsvae = paper[paper["model"] == "FSVAE"].iloc[0]
    assert fsvae["fid_clean"] == pytest.approx(90.12) and math.isnan(fsvae["fid"])
    assert fsvae["fad_published"] == pytest.approx(15.75) and math.isnan(fsvae["fad"])
    assert row["fid_clean"] == pytest.approx(112.0) and row["fad_published"] == pytest.approx(2.5)
    md = (two_seed_results / "tables" / "table1.md").read_text()
    assert "0.1200 ± 0.0283" in md and "105.0 ± 7.1" in md
    assert "this run (smoke, N=128, seeds 0,1)" in md and "FID: FID@64 vs test[:64] (N=64)" in md
    assert (
        "FAD (authors' AE: fashion published AE 0123abcd, stats 4567ef01)" in md
        and "FID-clean (paper's protocol)" in md
    )
    assert "\\pm" in (two_seed_results / "tables" / "table1.tex").read_text()
    costs = (two_seed_results / "tables" / "costs.md").read_text()
    assert "855,905 " in costs and "855,905 ±" not in costs and "test[:100]" in costs  # exact count, no ±0
    # 1e6 synops x 0.9 pJ + 3e5 MACs x 4.6 pJ = 2.28e6 pJ = 2.280 uJ per image, with its assumptions
    assert pd.read_csv(two_seed_results / "tables" / "costs.csv").iloc[0]["energy_uj"] == pytest.approx(2.28)
    assert (
        " 2.28 " in costs
        and "2.28 ±" not in costs
        and "0.9 pJ per synaptic operation" in costs
        and "Horowitz, ISSCC 2014" in costs
    )
    assert "test[:128]" in (two_seed_results / "tables" / "ablation_timesteps.md").read_text()  # the MSE's split


def test_unevaluated_and_foreign_runs_never_enter_the_tables(two_seed_results):
    write_run(two_seed_results, "fashion/esvae/poisson/T2/seed0", mse=0.5, fid=300.0, probe_acc=0.5, evaluated=False)
    write_run(two_seed_results, "fashion/esvae/poisson/T2/seed1", mse=0.6, fid=300.0, probe_acc=0.5, epochs=3)
    compile_report(two_seed_results)
    t_ablation = pd.read_csv(two_seed_results / "tables" / "ablation_timesteps.csv")
    t2 = t_ablation[t_ablation["T"] == 2].iloc[0]
    assert math.isnan(t2["mse"]) and t2["seeds"] == 1  # training's own test MSE is not an evaluation MSE
    assert t2["linear_probe"] == pytest.approx(0.5)  # the probes of the evaluated-less run still count
    runs = pd.read_csv(two_seed_results / "tables" / "runs.csv").set_index("run")
    foreign = runs.loc["fashion/esvae/poisson/T2/seed1"]
    assert not foreign["trained"] and "train_config.epochs=3 (preset: 1)" in foreign["excluded"]


def test_missing_runs_are_listed_not_filled_in(two_seed_results):
    compile_report(two_seed_results)
    runs = pd.read_csv(two_seed_results / "tables" / "runs.csv")
    assert len(runs) == 12  # 6 smoke points x 2 seeds
    complete = runs[runs["trained"] & runs["evaluated"] & runs["probed"]]["run"]
    assert sorted(complete) == [POINT.format(seed=0), POINT.format(seed=1)]
    assert "(2 of 12 complete;" in (two_seed_results / "tables" / "runs.md").read_text()
    t_ablation = pd.read_csv(two_seed_results / "tables" / "ablation_timesteps.csv")
    assert list(t_ablation["T"]) == [4]  # T=2 has no results: absent, not zero
    probes = pd.read_csv(two_seed_results / "tables" / "probes.csv")
    assert probes.iloc[0]["linear_probe"] == pytest.approx(0.75)
    assert probes.iloc[0]["rob_shuffled"] == pytest.approx(0.13)


def test_a_retrained_point_keeps_one_active_mlflow_run(tmp_path, two_seed_results):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    key = POINT.format(seed=0)
    run_dir = two_seed_results / "runs" / key
    first = mirror("train", run_dir / "train", key, uri, "retrain")
    second = mirror("train", run_dir / "train", key, uri, "retrain")
    assert mirror("evaluate", run_dir / "evaluate", key, uri, "retrain") == second != first
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("retrain").experiment_id])
    assert run.info.run_id == second and client.get_run(first).info.lifecycle_stage == "deleted"
    assert run.data.tags["evaluate.fid"] == "FID@64 vs test[:64] (N=64)" and run.data.metrics["fid"] == 100.0
    assert run.data.metrics["fid_clean"] == 107.0 and run.data.metrics["fad_published"] == 2.5
    assert run.data.tags["evaluate.fad_published"] == "FAD@64, published AE 0123abcd, stats 4567ef01"


def test_report_refuses_what_it_cannot_read(tmp_path, two_seed_results, capsys):
    assert main(["report", "--results", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json not found" in err
    bad = two_seed_results / "runs" / POINT.format(seed=1) / "evaluate" / "metrics.json"
    bad.write_text('{"fid": ')  # a truncated file
    with pytest.raises(ResultFileError, match="evaluate/metrics.json is not a valid evaluate result file"):
        compile_report(two_seed_results)
    bad.write_text(
        '{"model": "esvae", "dataset": "fashion", "fid": {"value": "high"}}'
    )  # whole, but not what evaluate writes
    with pytest.raises(
        ResultFileError, match=r"\(fid.value is 'high', expected a finite number\); delete it and re-run"
    ):
        compile_report(two_seed_results)


def test_tracking_never_fails_the_job(tmp_path, two_seed_results, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    uri = f"sqlite:///{blocker}/mlflow.db"  # its folder cannot be created
    run_dir = two_seed_results / "runs" / POINT.format(seed=0) / "train"
    assert mirror("train", run_dir, POINT.format(seed=0), uri, "x") is None
    assert "tracking skipped" in caplog.text and "result files" in caplog.text


@pytest.mark.workflow  # end to end (a whole command, real data or subprocesses): the long lane
def test_eight_concurrent_jobs_lose_no_run(tmp_path, two_seed_results):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    init_store(uri, "concurrency")  # what the workflow's onstart does
    run_dir = two_seed_results / "runs" / POINT.format(seed=0) / "train"
    keys = [f"fashion/esvae/poisson/T4/seed{100 + i}" for i in range(8)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "esvae_pipeline",
                "track",
                "--stage",
                "train",
                "--dir",
                str(run_dir),
                "--key",
                key,
                "--uri",
                uri,
                "--experiment",
                "concurrency",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for key in keys
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert not any("tracking skipped" in out for out in outputs), outputs
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrency").experiment_id])
    assert sorted(r.data.tags["esvae.key"] for r in runs) == sorted(keys)
    for r in runs:
        assert r.data.metrics["final_test_mse"] == pytest.approx(0.10)
        assert [m.step for m in client.get_metric_history(r.info.run_id, "test_mse")] == [0, 1]
        assert r.data.params["model_config.timesteps"] == "4" and r.info.status == "FINISHED"


def test_timings_table_sums_snakemakes_benchmark_files(two_seed_results, caplog):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    bench = two_seed_results / "benchmarks"
    for seed, (s, rss) in enumerate([(100.5, 900.0), (50.25, 1200.0)]):
        path = bench / "runs" / POINT.format(seed=seed) / "train.tsv"
        path.parent.mkdir(parents=True)
        path.write_text(header + f"{s}\t0:01:40\t{rss}\t0\t0\t0\t0\t0\t90\t{s}\n")
        (path.parent / "evaluate.tsv").write_text(header + "30\t0:00:30\t2000\t0\t0\t0\t0\t0\t90\t30\n")
    (bench / "fad").mkdir()
    (bench / "fad" / "fashion.tsv").write_text("not a benchmark file\n")
    compile_report(two_seed_results)
    t = pd.read_csv(two_seed_results / "tables" / "timings.csv").set_index(["rule", "what"])
    assert t.loc[("train", "all"), "seconds"] == pytest.approx(150.75) and t.loc[("train", "all"), "jobs"] == 2
    assert t.loc[("train", "all"), "seconds_max"] == pytest.approx(100.5)
    assert t.loc[("train", "fashion/esvae/T4"), "max_rss_mb"] == pytest.approx(1200.0)
    assert t.loc[("evaluate", "all"), "seconds"] == pytest.approx(60.0)
    assert ("fad_autoencoder", "all") not in t.index and "fashion.tsv is not a Snakemake benchmark file" in caplog.text
    assert "211 s of job time" in (two_seed_results / "tables" / "timings.md").read_text()


def test_a_tracked_run_carries_its_data_tables_and_loadable_weights(tmp_path, two_seed_results, monkeypatch):
    """What makes the runs browsable: a model-training experiment described with the tables' searches,
    the training and evaluation splits as dataset inputs (label, digest of exactly the images used),
    one tag per table of the point, and the final weights as a logged model that esvae loads."""
    import torch
    from mlflow.tracking import MlflowClient

    import esvae
    from esvae.checkpoints import save_checkpoint

    key = POINT.format(seed=0)
    train_dir = two_seed_results / "runs" / key / "train"
    config = json.loads((train_dir / "config.json").read_text())
    (train_dir / "config.json").write_text(json.dumps({**config, "train_images": 256, "test_images": 10000}))
    torch.manual_seed(0)
    model = esvae.build_model("esvae", "fashion", timesteps=4)
    save_checkpoint(train_dir / "checkpoint.pt", model, optimizer=torch.optim.AdamW(model.parameters()))
    split = {"shape": [1, 32, 32], "sha256": "ab" * 32}
    info = {
        "dataset": "fashion",
        "label": "Fashion-MNIST",
        "splits": {"train": {**split, "images": 60000}, "test": {**split, "images": 10000}},
    }
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "fashion.json").write_text(json.dumps(info))
    # What the workflow exports: the resolved configuration (here with the sampler ablation at T = 2, so
    # that the point is in the main table and the T ablation only) and the results folder.
    smoke = grid.resolve_config({"preset": "smoke"})
    config = {**smoke, "ablation_sampler": {**smoke["ablation_sampler"], "timesteps": 2}}
    monkeypatch.setenv("ESVAE_CONFIG", json.dumps(config))
    monkeypatch.setenv("ESVAE_RESULTS", str(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["track", "--uri", uri, "--experiment", "browse", "--stage", "train", "--dir", str(train_dir)]
    assert main([*args, "--key", key]) == 0

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("browse")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "`tags.table_main = 'true'`" in experiment.tags["mlflow.note.content"]
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.table_ablation_timesteps = 'true'")
    assert run.data.tags["table_main"] == "true" and "table_ablation_sampler" not in run.data.tags
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "evaluation"} and {d.name for d in inputs.values()} == {"Fashion-MNIST"}
    assert json.loads(inputs["training"].profile)["selection"].startswith("seeded subset")  # 256 of 60000
    assert json.loads(inputs["evaluation"].profile)["selection"] == "the whole split"  # all 10000
    assert inputs["training"].digest != inputs["evaluation"].digest  # other images, other digest
    (output,) = run.outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert logged.source_run_id == run.info.run_id and run.data.tags["model_uri"] == f"models:/{logged.model_id}"
    import mlflow

    folder = Path(mlflow.artifacts.download_artifacts(logged.artifact_location, dst_path=str(tmp_path / "m")))
    loaded, ckpt = esvae.load_checkpoint(folder / "checkpoint.pt")
    assert ckpt["optimizer"] is None and "esvae.load_checkpoint" in (folder / "README.md").read_text()
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
