"""MLflow mirror of the files a run writes under ``results/`` (the files stay the source of truth).

One MLflow run per run point (dataset, model, sampler, T, seed), identified by the tag ``esvae.key``
(``fashion/esvae/poisson/T16/seed0``). The training job creates it and logs the resolved config as
params, ``history.tsv`` as per-epoch metrics (step = epoch), the final metrics and the image grids;
the evaluation and probe jobs add their metrics and artifacts to the newest run with that key.

What makes the runs browsable: the experiment is tagged as a model-training experiment and
described with the searches of the paper's tables (:data:`VIEWS`); each run carries its data as
MLflow dataset inputs (training and evaluation splits, with a content digest), tags naming the
tables its point belongs to (``table_main`` ...), the preset and the device, and its final weights
as a logged model of the run (``checkpoint.pt`` without the optimiser state, beside a
``README.md`` saying how to load it).

Concurrency: the store and the experiment are created once before any job starts
(:func:`init_store`, called from the workflow's ``onstart``); every store operation is retried with
exponential back-off when SQLite reports a lock. Tracking never fails a job: when the store cannot be
reached the job's files are already written, and :func:`mirror` logs "tracking skipped" with the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, TypeVar

from esvae.checkpoints import git_commit
from esvae.results import SCALAR_METRICS, read_result

log = logging.getLogger(__name__)
KEY_TAG = "esvae.key"
STAGES = ("train", "evaluate", "probe")
# MLflow 3's record of what an experiment is (model training); MLflow 3.17's UI opens on the runs table
# only in its "Model training" mode, which esvae_pipeline.browse's addresses select.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
TABLE_TAG = "table_{}"  # value "true" on the points of each of the grid's experiments (the workflow sets it)
# The searches that answer the paper's questions: (title, search, order by, columns to show).
VIEWS = (
    (
        "Table I: the main comparison",
        "tags.table_main = 'true'",
        "metrics.`eval_mse`",
        ("metrics.eval_mse", "metrics.fid", "metrics.fid_clean", "metrics.fad", "metrics.kid"),
    ),
    (
        "The T ablation",
        "tags.table_ablation_timesteps = 'true'",
        "params.`timesteps`",
        ("params.timesteps", "metrics.eval_mse", "metrics.fid", "metrics.fad"),
    ),
    (
        "Robustness of the decoder",
        "tags.table_main = 'true' and metrics.robustness_mse_clean >= 0",  # the spiking latents only
        "metrics.`robustness_mse_clean`",
        ("metrics.robustness_mse_clean", "metrics.robustness_mse_shuffled", "metrics.linear_probe_accuracy"),
    ),
)
T = TypeVar("T")


def _is_lock_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(s in text for s in ("database is locked", "locked", "busy", "unique constraint failed"))


def with_retry(fn: Callable[[], T], what: str, attempts: int = 8, first_wait: float = 0.2) -> T:
    """``fn()``, retried on SQLite lock errors with jittered exponential back-off (0.2 s, 0.4 s, ...)."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # MlflowException wraps sqlalchemy's OperationalError
            if attempt == attempts - 1 or not _is_lock_error(exc):
                raise
            wait = first_wait * (2**attempt) * (1 + random.random())
            log.info("tracking: %s hit a lock (%s); retrying in %.1f s", what, type(exc).__name__, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def default_artifact_root(uri: str) -> Optional[str]:
    """Artifacts next to a SQLite store (``results/mlflow-artifacts``); the server decides otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlflow-artifacts").resolve().as_uri()
    return None


def init_store(uri: str, experiment: str) -> str:
    """Create the store (SQLite: its tables) and the experiment once; returns the experiment id."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    client = _client(uri)
    found = with_retry(lambda: client.get_experiment_by_name(experiment), "get experiment")
    if found is not None:
        return found.experiment_id
    tags = {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1], "mlflow.note.content": experiment_description()}
    try:
        return with_retry(
            lambda: client.create_experiment(experiment, artifact_location=default_artifact_root(uri), tags=tags),
            "create experiment",
        )
    except Exception:
        found = client.get_experiment_by_name(experiment)  # created by a concurrent caller
        if found is None:
            raise
        return found.experiment_id


def experiment_description() -> str:
    """The experiment's note (shown on its page): what a run is, and the searches for the tables."""
    lines = [
        "One run per run point of the grid (dataset, model, sampler, T, seed), named by its key; "
        "the files under results/PRESET/ are the source of truth. Searches for the paper's tables:",
        "",
    ]
    for title, search, _order, columns in VIEWS:
        lines.append(f"- **{title}**: `{search}` (columns: {', '.join(columns)})")
    return "\n".join(lines)


def flatten(prefix: str, value, out: Dict[str, str]) -> Dict[str, str]:
    """Nested mappings as dotted keys with string values (MLflow params)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def history_metrics(path: Path) -> List[tuple]:
    """``(name, value, epoch)`` for every finite number of ``history.tsv``."""
    from esvae.history import read_history

    return [
        (name, value, int(row["epoch"]))
        for row in read_history(path)
        for name, value in row.items()
        if name not in ("epoch", "step") and math.isfinite(value)
    ]


STAGE_FILES = {"train": "metrics.json", "evaluate": "metrics.json", "probe": "probes.json"}


def stage_metrics(stage: str, m: Mapping) -> Dict[str, float]:
    """The final metrics of one stage from its result file ``m`` (:data:`STAGE_FILES`; finite numbers only)."""
    out: Dict[str, float] = {}
    if stage == "train":
        out["final_test_mse"] = m["reconstruction_mse"]["value"]
        out["mean_image_mse"] = m["baseline_mean_image_mse"]["value"]
        out["parameters"] = m["parameters"]
        for key in ("steps", "train_seconds", "lr"):  # absent in runs from before they were recorded
            if _finite(m.get(key)):
                out[key] = m[key]
    elif stage == "evaluate":
        for metric in SCALAR_METRICS:
            entry = m.get(metric.key)
            if isinstance(entry, Mapping) and _finite(entry.get("value")):
                out[metric.tracked_name] = entry["value"]
        costs = m.get("spike_costs") or {}
        if _finite(costs.get("mean_firing_rate")):
            out["mean_firing_rate"] = costs["mean_firing_rate"]
        path = costs.get("reconstruction_path") or {}
        for k in ("synops", "macs", "energy_pj"):
            if _finite(path.get(k)):
                out[f"{k}_per_image"] = path[k]
        timing = m.get("sampling_time") or {}
        if _finite(timing.get("milliseconds_per_image")):
            out["sampling_ms_per_image"] = timing["milliseconds_per_image"]
    elif stage == "probe":
        info = m["information_retention"]
        for key, name in (
            ("linear_probe", "linear_probe_accuracy"),
            ("mse_sampled", "probe_mse_sampled"),
            ("mse_deterministic", "probe_mse_deterministic"),
        ):
            if _finite((info.get(key) or {}).get("value")):
                out[name] = info[key]["value"]
        for row in (m.get("decoder_robustness") or {}).get("rows") or []:  # none for the ANN VAE
            if _finite(row.get("mse")):
                out[f"robustness_mse_{row['condition']}"] = row["mse"]
    else:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    return {k: float(v) for k, v in out.items() if _finite(v)}


def stage_conditions(stage: str, m: Mapping) -> Dict[str, str]:
    """The conditions of a stage's numbers (N, split, reference set, weights) as run tags: tags, not
    params, because a re-run evaluation may use other settings and params cannot change."""
    if stage == "evaluate":
        out = {}
        mse = m.get("reconstruction_mse") or {}
        if mse:
            out["evaluate.mse"] = f"N={mse.get('n')} ({mse.get('split')})"
        for key in ("fid", "kid", "fad", "fid_clean"):
            block = m.get(key) or {}
            if block.get("name"):
                out[f"evaluate.{key}"] = (
                    f"{block['name']} vs {block.get('reference_split')} (N={block.get('n_reference')})"
                )
        published = m.get("fad_published") or {}
        if published.get("label"):
            out["evaluate.fad_published"] = f"{published['name']}, {published['label']}"
        for key in ("fad_published", "fid_clean", "fid", "fad"):  # a refusal is said, not left blank
            if (m.get(key) or {}).get("refused"):
                out[f"evaluate.{key}"] = "refused: " + m[key]["refused"]
        weights = (m.get("fid") or {}).get("weights")
        if weights:
            out["evaluate.inception_weights"] = weights
        if (m.get("inception_score") or {}).get("refused"):
            out["evaluate.inception_score"] = "refused: " + m["inception_score"]["refused"]
        return out
    if stage == "probe":
        probe = (m.get("information_retention") or {}).get("linear_probe") or {}
        return {"probe.linear_probe": f"fit on {probe.get('train_split')}, tested on {probe.get('test_split')}"}
    if stage == "train":
        out = {"device": str(m.get("device_name") or m.get("device") or "not recorded")}
        if m.get("lr_rule"):
            out["lr_rule"] = str(m["lr_rule"])
        return out
    return {}


ARTIFACTS = {
    "train": ("config.json", "history.tsv", "metrics.json", "reconstructions.png", "samples.png", "train.log"),
    "evaluate": ("metrics.json", "evaluate.log"),
    "probe": ("probes.json", "robustness.tsv", "robustness.png", "perturbations.png", "probe.log"),
}


def dataset_inputs(config: Mapping, data_info: Mapping) -> List:
    """The run's training and evaluation images as MLflow dataset inputs: named by the data label,
    with a digest of exactly the images used (the split's content hash, the selection rule and N)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    out = []
    for split, context, n, rule in (
        ("train", "training", config.get("train_images"), "seeded subset (esvae.data.seeded_subset, seed 0)"),
        ("test", "evaluation", config.get("test_images"), "the first N images"),
    ):
        info = data_info["splits"].get(split)
        if info is None or not isinstance(n, int):
            continue
        selection = "the whole split" if n >= info["images"] else rule
        digest = hashlib.sha256(f"{info['sha256']}|{split}|{n}|{selection}".encode()).hexdigest()[:16]
        profile = {"images": n, "split_images": info["images"], "selection": selection, "split_sha256": info["sha256"]}
        dataset = Dataset(
            name=data_info["label"],
            digest=digest,
            source_type="esvae",
            source=json.dumps({"dataset": data_info["dataset"], "split": split}),
            schema=json.dumps({"image_shape": info["shape"], "dtype": "uint8"}),
            profile=json.dumps(profile),
        )
        out.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    return out


LOAD_NOTE = """# {key}: final weights

`checkpoint.pt` is the run's final checkpoint in this project's format with the optimiser state
dropped (weights, model and run configuration). Load it with the library:

```python
import esvae

model, ckpt = esvae.load_checkpoint("checkpoint.pt")  # model in the paper setting ckpt["setting"]
```

Download (with `MLFLOW_TRACKING_URI` set to this store):
`mlflow artifacts download --artifact-uri models:/{model_id}/checkpoint.pt`.
"""


def _log_model(client, experiment_id: str, run_id: str, checkpoint: Path, key: str) -> None:
    """The final weights as an MLflow logged model of the run (the runs table's Models column and the
    run page link it): ``checkpoint.pt`` without the optimiser, and how to load it."""
    import tempfile

    import torch

    from esvae.checkpoints import read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    ckpt["optimizer"], ckpt["training_state"] = None, None
    model = with_retry(
        lambda: client.create_logged_model(
            experiment_id, name=ckpt["model_name"], source_run_id=run_id, tags={KEY_TAG: key}, model_type="esvae"
        ),
        "create logged model",
    )
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(ckpt, Path(tmp) / "checkpoint.pt")
        (Path(tmp) / "README.md").write_text(LOAD_NOTE.format(key=key, model_id=model.model_id))
        with_retry(lambda: client.log_model_artifacts(model.model_id, tmp), "log model artifacts")
    with_retry(lambda: client.finalize_logged_model(model.model_id, "READY"), "finalize logged model")
    from mlflow.entities import LoggedModelOutput

    with_retry(lambda: client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)]), "link logged model")
    with_retry(lambda: client.set_tag(run_id, "model_uri", f"models:/{model.model_id}"), "tag model uri")


def _runs_of(client, experiment_id: str, key: str):
    """The active MLflow runs of run point ``key``, newest first."""
    return with_retry(
        lambda: client.search_runs(
            [experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", order_by=["attributes.start_time DESC"]
        ),
        "search runs",
    )


def mirror(
    stage: str,
    run_dir: Path,
    key: str,
    uri: str,
    experiment: str,
    tags: Optional[Mapping[str, str]] = None,
    log_artifacts: bool = True,
    data_info: Optional[Mapping] = None,
) -> Optional[str]:
    """Copy one stage's results of run point ``key`` into MLflow; returns the MLflow run id.

    ``train`` starts a new MLflow run (a re-trained point gets a fresh run; the newest is the one
    evaluate/probe extend). ``data_info`` (the workflow's ``data/<dataset>.json``) gives the train
    stage its dataset inputs. Never raises: failures are logged as "tracking skipped" and give None.
    """
    try:
        return _mirror(stage, Path(run_dir), key, uri, experiment, dict(tags or {}), log_artifacts, data_info)
    except Exception as exc:
        log.warning(
            "tracking skipped for %s (%s stage): %s: %s; the result files in %s are complete",
            key,
            stage,
            type(exc).__name__,
            exc,
            run_dir,
        )
        return None


def _mirror(stage, run_dir, key, uri, experiment, tags, log_artifacts, data_info):
    from mlflow.entities import Metric, Param, RunTag

    from .grid import RunPoint

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    client = _client(uri)
    experiment_id = init_store(uri, experiment)
    existing = _runs_of(client, experiment_id, key)
    # evaluate/probe extend the newest run of the point; train starts a new one and retires the others
    run = existing[0] if existing and stage != "train" else None
    all_tags = {KEY_TAG: key, "mlflow.source.git.commit": git_commit() or "unknown", **tags}
    if run is None:
        older = existing if stage == "train" else []
        run = with_retry(lambda: client.create_run(experiment_id, run_name=key, tags=all_tags), "create run")
        for old in older:  # a re-trained point: its earlier run goes to MLflow's trash (restorable)
            with_retry(lambda old=old: client.delete_run(old.info.run_id), "delete superseded run")
            log.info(
                "tracking: earlier MLflow run %s of %s deleted (superseded by %s)",
                old.info.run_id,
                key,
                run.info.run_id,
            )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    result = read_result(run_dir / STAGE_FILES[stage], stage)
    metrics = [Metric(name, value, now, 0) for name, value in stage_metrics(stage, result).items()]
    params: List = []
    if stage == "train":
        metrics += [Metric(name, value, now, epoch) for name, value, epoch in history_metrics(run_dir / "history.tsv")]
        resolved = read_result(run_dir / "config.json", "config")
        flat = flatten("", resolved, {})
        point = RunPoint.from_key(key)  # the wildcards, as params too (filterable in the UI)
        flat.update({"sampler": point.sampler, "timesteps": str(point.timesteps), "seed": str(point.seed)})
        params = [Param(k, v[:6000]) for k, v in flat.items()]
        if data_info is not None:
            inputs = dataset_inputs(resolved, data_info)
            with_retry(lambda: client.log_inputs(run_id, datasets=inputs), "log dataset inputs")
    stage_tags = [RunTag(k, str(v)) for k, v in all_tags.items()] + [RunTag(f"esvae.stage.{stage}", "done")]
    stage_tags += [RunTag(k, v[:5000]) for k, v in stage_conditions(stage, result).items()]
    with_retry(lambda: client.log_batch(run_id, tags=stage_tags), "log tags")
    for i in range(0, len(metrics), 500):  # log_batch takes at most 1000 metrics and 100 params
        with_retry(lambda i=i: client.log_batch(run_id, metrics=metrics[i : i + 500]), "log metrics")
    for i in range(0, len(params), 100):
        with_retry(lambda i=i: client.log_batch(run_id, params=params[i : i + 100]), "log params")
    if log_artifacts:
        for name in ARTIFACTS[stage]:
            path = run_dir / name
            if path.is_file():
                with_retry(
                    lambda path=path: client.log_artifact(run_id, str(path), artifact_path=stage), "log artifact"
                )
    if stage == "train" and log_artifacts and (run_dir / "checkpoint.pt").is_file():
        _log_model(client, experiment_id, run_id, run_dir / "checkpoint.pt", key)
    with_retry(lambda: client.set_terminated(run_id, "FINISHED"), "finish run")
    log.info(
        "tracking: %s stage of %s logged to MLflow run %s (%s, experiment %r)", stage, key, run_id, uri, experiment
    )
    return run_id
