"""Mirror a run folder's result files into MLflow (the workflow calls it after each stage)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from esvae.cli._common import setup_logging
from esvae.errors import ConfigError
from esvae.results import ResultFileError, read_result

log = logging.getLogger(__name__)


def register(sub) -> None:
    tr = sub.add_parser("track", help="mirror a run folder's result files into MLflow (never fails the job)")
    tr.add_argument("--stage", required=True, choices=("train", "evaluate", "probe"))
    tr.add_argument("--dir", required=True, help="the stage's output folder")
    tr.add_argument("--key", required=True, help="run key dataset/model/sampler/T<n>/seed<n>")
    tr.add_argument(
        "--uri",
        default=os.environ.get("ESVAE_MLFLOW_URI"),
        help="MLflow tracking URI (default: $ESVAE_MLFLOW_URI, which the workflow sets)",
    )
    tr.add_argument(
        "--experiment",
        default=os.environ.get("ESVAE_MLFLOW_EXPERIMENT"),
        help="MLflow experiment name (default: $ESVAE_MLFLOW_EXPERIMENT)",
    )
    tr.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE", help="extra run tag (repeatable)")
    tr.add_argument(
        "--data-info",
        help="the dataset's description from prepare-data (data/<dataset>.json; default: the one under "
        "$ESVAE_RESULTS, which the workflow sets): the train stage logs its splits as MLflow dataset inputs",
    )
    tr.set_defaults(run=run)


def run(args) -> int:
    from ..grid import RunPoint, experiment_points, point_tables
    from ..tracking import TABLE_TAG, mirror

    if not args.uri or not args.experiment:
        raise ConfigError("track needs --uri and --experiment (or $ESVAE_MLFLOW_URI and $ESVAE_MLFLOW_EXPERIMENT)")
    point = RunPoint.from_key(args.key)
    tags = dict(point.wildcards())
    if os.environ.get("ESVAE_PRESET"):
        tags["preset"] = os.environ["ESVAE_PRESET"]
    if os.environ.get("ESVAE_CONFIG"):  # the workflow's resolved configuration: the point's tables
        tables = point_tables(experiment_points(json.loads(os.environ["ESVAE_CONFIG"]))).get(point, [])
        tags.update({TABLE_TAG.format(name): "true" for name in tables})
    for item in args.tag:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--tag expects NAME=VALUE, got {item!r}")
        tags[name] = value
    setup_logging()
    data_info = read_result(Path(args.data_info), "data") if args.data_info else None  # named: must read
    if data_info is None and args.stage == "train" and os.environ.get("ESVAE_RESULTS"):
        try:  # the workflow's description of the dataset (an input of the train job)
            data_info = read_result(Path(os.environ["ESVAE_RESULTS"]) / "data" / f"{point.dataset}.json", "data")
        except ResultFileError as exc:  # tracking never fails a job: the run is logged without its inputs
            log.warning("dataset inputs not logged: %s", exc)
    run_id = mirror(args.stage, Path(args.dir), args.key, args.uri, args.experiment, tags, data_info=data_info)
    print(
        f"MLflow run {run_id} ({args.stage} of {args.key})"
        if run_id
        else f"tracking skipped for {args.key} ({args.stage}); result files are complete"
    )
    return 0
