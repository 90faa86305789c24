"""Print the addresses of the MLflow views of the paper's tables, and take their screenshots."""

from __future__ import annotations

from pathlib import Path

from esvae.cli._common import setup_logging


def register(sub) -> None:
    br = sub.add_parser(
        "browse", help="serve a results store with mlflow ui, print the tables' views and optionally screenshot them"
    )
    br.add_argument("--store", required=True, help="MLflow tracking URI, e.g. sqlite:///results/smoke/mlflow.db")
    br.add_argument("--experiment", required=True, help="MLflow experiment name (the preset's 'experiment')")
    br.add_argument("--screenshots", help="folder for a screenshot of each view (mlflow_<view>.png), via Chromium")
    br.set_defaults(run=run)


def run(args) -> int:
    from ..browse import experiment_id, render, serve_mlflow, view_urls

    setup_logging()
    with serve_mlflow(args.store) as base:
        eid = experiment_id(base, args.experiment)
        for slug, title, url, columns in view_urls(base, eid):
            line = f"{title}: {url} (columns: {', '.join(columns)})"
            if args.screenshots:
                path = Path(args.screenshots) / f"mlflow_{slug}.png"
                render(url, screenshot=path)
                line += f"; screenshot {path}"
            print(line)
    return 0
