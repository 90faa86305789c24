"""The README's smoke command, run for real (data -> training -> metrics -> probes -> tables/figures
-> MLflow), and its outputs checked: files, tables, the MLflow store and the MLflow UI's REST API.

The run (the session fixture ``smoke_dir`` in conftest.py, shared with the SLURM test) takes a few
minutes on 2 cores; set ``ESVAE_SMOKE_DIR`` to a folder where the smoke preset already ran to check
that folder instead (the checks are the same).
"""

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import BIN, REPO, workflow_env
from PIL import Image

from esvae_pipeline import grid
from esvae_pipeline.report import FIGURES, TABLES

CONFIG = grid.resolve_config({"preset": "smoke"})
POINTS = grid.all_points(CONFIG)


def test_every_output_exists_and_parses(smoke_dir):
    results = smoke_dir / "results" / "smoke"
    for p in POINTS:
        run = results / "runs" / p.key
        train = json.loads((run / "train" / "metrics.json").read_text())
        assert (train["model"], train["dataset"], train["timesteps"], train["epochs"]) == (
            p.model,
            p.dataset,
            p.timesteps,
            1,
        )
        assert (run / "train" / "checkpoint.pt").stat().st_size > 10_000
        ev = json.loads((run / "evaluate" / "metrics.json").read_text())
        assert ev["fid"]["name"] == "FID@64" and ev["fad"]["name"] == "FAD@64" and ev["reconstruction_mse"]["n"] == 128
        assert ev["inception_score"]["value"] is None and "refused" in ev["inception_score"]  # offline weights
        probes = json.loads((run / "probe" / "probes.json").read_text())
        assert 0.0 <= probes["information_retention"]["linear_probe"]["value"] <= 1.0
        for stage in ("train", "evaluate", "probe"):  # one path grammar for logs/ and benchmarks/
            assert (smoke_dir / "logs" / "smoke" / "runs" / p.key / f"{stage}.log").is_file()
            assert (results / "benchmarks" / "runs" / p.key / f"{stage}.tsv").is_file()
    assert sorted(p.name for p in (smoke_dir / "results").iterdir()) == ["smoke"]  # its own folder only
    for name in TABLES:
        frame = pd.read_csv(results / "tables" / f"{name}.csv")
        assert len(frame) > 0, name
        md = (results / "tables" / f"{name}.md").read_text()
        assert f"**{name}**" in md and "PIPELINE CHECK ONLY: these numbers say nothing about the models" in md
        tex = (results / "tables" / f"{name}.tex").read_text()
        assert "\\begin{table}" in tex and "\\end{tabular}" in tex and "±" not in tex
    claims = (results / "claims.md").read_text()
    assert "PIPELINE CHECK ONLY" in claims and "| C1 | ESVAE reconstructs better than FSVAE | Fashion-MNIST" in claims
    for name in [*FIGURES, "grids_fashion", "perturbations_fashion"]:
        with Image.open(results / "figures" / f"{name}.png") as image:
            assert image.size[0] > 200 and image.size[1] > 100


def test_table1_holds_paper_and_reproduced_rows(smoke_dir):
    table = pd.read_csv(smoke_dir / "results" / "smoke" / "tables" / "table1.csv")
    paper = pd.read_csv(REPO / "esvae" / "resources" / "paper_table1.csv")
    fashion_paper = paper[paper["dataset"] == "fashion"]
    ours = table[table["source"].str.startswith("this run (smoke")]
    theirs = table[table["source"].str.startswith("paper")]
    assert len(theirs) == len(fashion_paper)  # every published Fashion-MNIST row, SNN GANs included
    esvae_paper = theirs[theirs["model"] == "ESVAE"].iloc[0]
    # the published FID/FAD stand under the protocols they were measured in (clean-fid; the authors' AE)
    assert (
        esvae_paper["mse"],
        esvae_paper["fid_clean"],
        esvae_paper["fad_published"],
        esvae_paper["inception_score"],
    ) == (0.019, 125.3, 11.13, 6.227)
    assert pd.isna(esvae_paper["fid"]) and pd.isna(esvae_paper["fad"])
    assert sorted(ours["model"]) == ["ANN VAE", "ESVAE", "FSVAE", "TAID"]
    for _, row in ours.iterrows():
        key = next(
            p.key
            for p in grid.experiment_points(CONFIG)["main"]
            if {"ESVAE": "esvae", "FSVAE": "fsvae", "ANN VAE": "ann_vae", "TAID": "taid"}[row["model"]] == p.model
        )
        ev = json.loads((smoke_dir / "results" / "smoke" / "runs" / key / "evaluate" / "metrics.json").read_text())
        assert row["mse"] == pytest.approx(ev["reconstruction_mse"]["value"])
        assert row["fid"] == pytest.approx(ev["fid"]["value"]) and row["fad"] == pytest.approx(ev["fad"]["value"])
        assert row["fid_clean"] == pytest.approx(ev["fid_clean"]["value"]) and ev["fid_clean"]["name"] == "FID-clean@64"
        assert pd.isna(row["inception_score"])  # refused, never filled in
        assert pd.isna(row["fad_published"]) and "files were not supplied" in ev["fad_published"]["refused"]
        assert "FID: FID@64 vs test[:64] (N=64)" in row["conditions"] and "MSE over test[:128]" in row["conditions"]
        assert row["source"] == "this run (smoke, N=128, seeds 0)"
    runs = pd.read_csv(smoke_dir / "results" / "smoke" / "tables" / "runs.csv")
    assert len(runs) == len(POINTS) and runs[["trained", "evaluated", "probed"]].all().all()


def test_ablation_tables_hold_their_points(smoke_dir):
    t = pd.read_csv(smoke_dir / "results" / "smoke" / "tables" / "ablation_timesteps.csv")
    assert sorted(t["T"]) == [2, 4] and set(t["model"]) == {"esvae"}
    s = pd.read_csv(smoke_dir / "results" / "smoke" / "tables" / "ablation_sampler.csv")
    assert sorted(s["sampler"]) == ["bernoulli_st", "poisson"]
    probes = pd.read_csv(smoke_dir / "results" / "smoke" / "tables" / "probes.csv")
    assert len(probes) == len(POINTS)
    spiking = probes[probes["model"] != "ann_vae"]
    assert spiking["rob_noise_0.30"].notna().all() and probes[probes["model"] == "ann_vae"]["rob_clean"].isna().all()


def _mlflow_runs(smoke_dir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_dir / 'results' / 'smoke' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(CONFIG["experiment"])
    return client, client.search_runs([experiment.experiment_id])


def test_mlflow_store_holds_one_run_per_trained_model_with_its_metrics(smoke_dir):
    client, runs = _mlflow_runs(smoke_dir)
    by_key = {r.data.tags["esvae.key"]: r for r in runs}
    assert sorted(by_key) == sorted(p.key for p in POINTS) and len(runs) == len(POINTS)
    for p in POINTS:
        run = by_key[p.key]
        train = json.loads((smoke_dir / "results" / "smoke" / "runs" / p.key / "train" / "metrics.json").read_text())
        ev = json.loads((smoke_dir / "results" / "smoke" / "runs" / p.key / "evaluate" / "metrics.json").read_text())
        assert run.data.metrics["final_test_mse"] == pytest.approx(train["reconstruction_mse"]["value"])
        assert run.data.metrics["fid"] == pytest.approx(ev["fid"]["value"])
        assert "linear_probe_accuracy" in run.data.metrics
        assert run.data.params["model"] == p.model and run.data.tags["preset"] == "smoke"
        assert run.data.params["model_config.timesteps"] == run.data.params["timesteps"] == str(p.timesteps)
        assert run.data.params["sampler"] == p.sampler and run.data.params["seed"] == str(p.seed)
        assert run.data.tags["mlflow.source.git.commit"] != "unknown"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "test_mse")] == [0, 1]  # per epoch
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"train", "evaluate", "probe"}
        assert run.data.tags["evaluate.fid"] == "FID@64 vs test[:64] (N=64)"


def test_mlflow_ui_serves_the_smoke_runs_over_its_rest_api(smoke_dir):
    from esvae_pipeline.browse import serve_mlflow

    store = f"sqlite:///{smoke_dir / 'results' / 'smoke' / 'mlflow.db'}"
    with serve_mlflow(store) as base:  # mlflow ui on a loopback port, stopped by process group after
        name = urllib.parse.quote(CONFIG["experiment"])
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}") as r:
            experiment = json.load(r)["experiment"]
        experiment_id = experiment["experiment_id"]
        experiment_tags = {t["key"]: t["value"] for t in experiment["tags"]}
        assert experiment_tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search",
            method="POST",
            data=json.dumps({"experiment_ids": [experiment_id], "max_results": 100}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as r:
            runs = json.load(r)["runs"]
        keys = sorted(next(t["value"] for t in run["data"]["tags"] if t["key"] == "esvae.key") for run in runs)
        assert keys == sorted(p.key for p in POINTS)
        results = smoke_dir / "results" / "smoke"
        for run in runs:
            metrics = {m["key"] for m in run["data"]["metrics"]}
            assert {"final_test_mse", "eval_mse", "fid", "fad", "linear_probe_accuracy"} <= metrics
            tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
            point = grid.RunPoint.from_key(tags["esvae.key"])
            tables = {k[len("table_") :] for k, v in tags.items() if k.startswith("table_") and v == "true"}
            in_tables = {name for name, points in grid.experiment_points(CONFIG).items() if point in points}
            assert tables == in_tables and tables, tags  # each table is one search filter
            assert tags["preset"] == "smoke" and tags["device"]
            label = json.loads((results / "data" / f"{point.dataset}.json").read_text())["label"]
            inputs = run["inputs"]["dataset_inputs"]
            contexts = {i["tags"][0]["value"]: i["dataset"]["name"] for i in inputs}
            assert contexts == {"training": label, "evaluation": label}, inputs
            (output,) = run["outputs"]["model_outputs"]
            with urllib.request.urlopen(f"{base}/api/2.0/mlflow/logged-models/{output['model_id']}") as r:
                logged = json.load(r)["model"]
            assert logged["info"]["source_run_id"] == run["info"]["run_id"]
            assert logged["info"]["status"] == "LOGGED_MODEL_READY"
        with urllib.request.urlopen(f"{base}/") as r:  # the UI page itself
            assert r.status == 200 and "<html" in r.read().decode(errors="replace").lower()


def test_a_finished_run_plans_nothing_even_with_another_tracking_store(smoke_dir):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for extra in ([], ["tracking_uri=http://127.0.0.1:9", "experiment=elsewhere"]):
        out = subprocess.run(
            [
                str(BIN / "snakemake"),
                "-n",
                "-s",
                str(REPO / "Snakefile"),
                "--directory",
                str(smoke_dir),
                "--config",
                "preset=smoke",
                *extra,
            ],
            cwd=smoke_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0 and "Nothing to be done" in out.stdout + out.stderr, (out.stdout + out.stderr)[
            -3000:
        ]


def test_snakemake_report_builds_an_html_report_with_the_figures(smoke_dir):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    out = subprocess.run(
        [
            str(BIN / "snakemake"),
            "--report",
            "report.html",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(smoke_dir),
            "--config",
            "preset=smoke",
        ],
        cwd=smoke_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    html = (smoke_dir / "report.html").read_text(errors="replace")
    for name in ("robustness.png", "metrics_vs_timesteps.png", "grids_fashion.png", "perturbations_fashion.png"):
        assert name in html
    assert re.search(r"Decoder robustness", html)


def test_snakemake_report_in_a_real_browser_opens_on_the_tables(smoke_dir, tmp_path):
    """The report (built by the test above) rendered by headless Chromium: its results menu lists the
    tables first, then the figures; the three tables it embeds (Table I with the paper's and this
    run's rows, the claims, the costs) render as tables. The report has no addresses for its items,
    so each embedded table page is rendered on its own, from the report's own data."""
    import base64

    from esvae.models.registry import model_label
    from esvae_pipeline import browse

    report = smoke_dir / "report.html"
    if not report.is_file():
        test_snakemake_report_builds_an_html_report_with_the_figures(smoke_dir)
    text = browse.text_of(browse.render(report.as_uri()))
    order = [text.find(f"{i}. {name}") for i, name in enumerate(("Tables", "Ablations", "Probes", "Training"), 1)]
    assert -1 not in order and order == sorted(order), text[:2000]
    pages = {}
    embedded = r"data:text/html;charset=utf8;filename=[^;]*;base64,([A-Za-z0-9+/=]+)"
    for encoded in re.findall(embedded, report.read_text()):
        page = base64.b64decode(encoded).decode()
        title = re.search(r"<title>([^<]+)</title>", page)
        if title:
            pages[title.group(1)] = page
    assert {"table1", "claims", "costs"} <= set(pages), sorted(pages)
    shown = {}
    for name in ("table1", "claims", "costs"):
        (tmp_path / f"{name}.html").write_text(pages[name])
        dom = browse.render((tmp_path / f"{name}.html").as_uri())
        assert "<table" in dom and "<th" in dom, name
        shown[name] = browse.text_of(dom)
    assert "paper (" in shown["table1"] and "this run (smoke" in shown["table1"]
    for model in CONFIG["main"]["models"]:  # Table I names models by label, the costs by registry name
        assert model_label(model) in shown["table1"] and f"| {model} |" in shown["costs"]
    claims = pd.read_csv(smoke_dir / "results" / "smoke" / "claims.csv")
    assert all(str(c) in shown["claims"] for c in claims["id"])


def _training_pids(work: Path):
    """Process ids of ``python -m esvae train`` jobs running in ``work`` (read from /proc)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"esvae" in argv and b"train" in argv and Path(os.readlink(proc / "cwd")) == work:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_killed_training_job_resumes_on_the_next_snakemake_run(smoke_dir, tmp_path, data_root, inception_cache):
    """One smoke training job with a checkpoint every step: its process is SIGKILLed mid-epoch,
    Snakemake reports the failure and removes the declared outputs (not resume.pt); the same
    snakemake command then resumes it and ends with the smoke run's exact weights."""
    import torch

    key = "fashion/esvae/poisson/T4/seed0"
    work = tmp_path / "work"
    work.mkdir()
    (work / "every-step.yaml").write_text("checkpoint: {every_steps: 1}\n")  # --config would pass "1" as a string
    cmd = [
        str(BIN / "snakemake"),
        "--cores",
        "1",
        "--config",
        "preset=smoke",
        "--configfile",
        "every-step.yaml",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        f"results/smoke/runs/{key}/train/checkpoint.pt",
    ]
    env = workflow_env(data_root, inception_cache)
    run_dir = work / "results" / "smoke" / "runs" / key / "train"
    with open(tmp_path / "first.txt", "w") as first_out:
        first = subprocess.Popen(cmd, cwd=work, env=env, stdout=first_out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (
            (run_dir / "train.log").is_file() and "checkpoint: epoch 1, batch 2," in (run_dir / "train.log").read_text()
        ):
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.txt").read_text()[-3000:]
            time.sleep(0.02)
        pids = _training_pids(work)
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)
        assert first.wait(timeout=120) != 0
    assert (run_dir / "resume.pt").is_file() and not (run_dir / "checkpoint.pt").exists()
    second = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    train_log = (run_dir / "train.log").read_text()  # the run's own log (not a declared output) keeps both attempts
    assert (
        "resuming from results/smoke/runs/fashion/esvae/poisson/T4/seed0/train/resume.pt: epoch 1, batch " in train_log
    )
    assert train_log.count("training esvae on Fashion-MNIST") == 2
    ours = torch.load(run_dir / "checkpoint.pt", weights_only=True)["state_dict"]
    smoke = torch.load(smoke_dir / "results" / "smoke" / "runs" / key / "train" / "checkpoint.pt", weights_only=True)[
        "state_dict"
    ]
    assert ours.keys() == smoke.keys() and all(torch.equal(ours[k], smoke[k]) for k in ours)


README_VIEW = re.compile(r"http://127\.0\.0\.1:5000/#/experiments/(\d+)/runs\?(\S+?)(?=[`)\s])")


def test_mlflow_in_a_real_browser_lands_on_the_runs_and_the_readme_views_work(smoke_dir, tmp_path):
    """Headless Chromium on `mlflow ui` over the smoke store: the experiment opens on its runs table,
    which lists every run point with its dataset; a compare view of two runs draws their test_mse
    curves; each of the README's view URLs opens that table's runs, filtered, with screenshots made
    by the same code that made the ones in docs/."""
    import esvae
    from esvae_pipeline import browse

    browse.chromium()  # a missing browser fails here with the command that installs it
    store = f"sqlite:///{smoke_dir / 'results' / 'smoke' / 'mlflow.db'}"
    results = smoke_dir / "results" / "smoke"
    with browse.serve_mlflow(store) as base:
        eid = browse.experiment_id(base, CONFIG["experiment"])
        landing = browse.render(f"{base}/#/experiments/{eid}?{browse.ML_WORKFLOW}")
        assert "<title>Runs - Experiment" in landing, browse.text_of(landing)[:500]
        text = browse.text_of(landing)
        assert re.search(rf"\b{len(POINTS)} \| matching runs\b", text), text[:3000]
        for p in POINTS:
            label = json.loads((results / "data" / f"{p.dataset}.json").read_text())["label"]
            assert p.key in text and label in text, (p.key, label)
        # two runs side by side: MLflow's metric page draws both test_mse curves
        client, runs = _mlflow_runs(smoke_dir)
        pair = runs[:2]
        compare = browse.render(browse.compare_url(base, eid, [r.info.run_id for r in pair], "test_mse"))
        assert "main-svg" in compare, browse.text_of(compare)[:1000]
        for r in pair:
            assert f"{r.data.tags['esvae.key']} (test_mse)" in browse.text_of(compare)
        # the README's views: each opens the runs of its table, and its screenshot is taken
        readme = (REPO / "README.md").read_text()
        urls = README_VIEW.findall(readme)
        assert len(urls) == len(browse.VIEWS) and {u[0] for u in urls} == {eid}, urls
        views = browse.view_urls(base, eid)
        spiking = {m for m in CONFIG["main"]["models"] if esvae.build_model(m, "fashion").spiking_latent}
        expected = {  # the run points each view must list, from the grid
            "table_i": grid.experiment_points(CONFIG)["main"],
            "the_t_ablation": grid.experiment_points(CONFIG)["ablation_timesteps"],
            "robustness_of_the_decoder": [p for p in grid.experiment_points(CONFIG)["main"] if p.model in spiking],
        }
        for (slug, title, url, _columns), (_eid, query) in zip(views, urls):
            assert url.endswith(f"/runs?{query}"), (title, url, query)  # the README says what the code opens
            shot = tmp_path / f"mlflow_{slug}.png"
            page = browse.text_of(browse.render(url, screenshot=shot))
            points = expected[slug]
            assert re.search(rf"\b{len(points)} \| matching runs?\b", page), (title, page[:2000])
            assert all(p.key in page for p in points), title
            assert Image.open(shot).size == browse.WINDOW
