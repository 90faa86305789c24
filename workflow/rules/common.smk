# Config validation (first thing), the grid, wildcard constraints and input functions.
import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from esvae_pipeline import grid
from esvae.errors import ConfigError
from esvae_pipeline.report import FIGURES, TABLES

REPO = Path(workflow.current_basedir).parents[1]  # this file is workflow/rules/common.smk
try:
    CONFIG = grid.resolve_config(config, REPO / "config" / "presets", REPO / "workflow" / "schemas" / "config.schema.yaml")
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

PRESET = CONFIG["preset"]
EXPERIMENTS = grid.experiment_points(CONFIG)
POINTS = grid.all_points(CONFIG)
MAIN_DATASETS = sorted({p.dataset for p in EXPERIMENTS["main"]})
RESOURCES = CONFIG["resources"]
TRACKING_URI = grid.tracking_uri(CONFIG)
ENV_ARGS = " ".join(grid.environment_args(CONFIG))

# How jobs find the code and the tracking store: environment variables, not rule params, so that
# moving the checkout, another interpreter or another `tracking_uri` never re-runs finished jobs
# (Snakemake re-runs a job whose params changed). Jobs inherit them, locally and through SLURM.
# PATH: the interpreter running snakemake (it has esvae installed) comes first; with --use-conda
# the conda env is activated in front of it and finds the package through PYTHONPATH
# (workflow/envs/esvae.yaml does not install esvae itself).
grid.export_job_environment(REPO, TRACKING_URI, CONFIG)
CONDA_ENV = "../envs/esvae.yaml"

# Each preset writes under its own folder, so a smoke check never touches the default preset's
# committed results: results/<preset>/ (runs, tables, figures, claims, MLflow store, per-job times
# under benchmarks/) and logs/<preset>/. One path grammar, shared by runs/, logs/ and benchmarks/.
OUT = grid.results_dir(CONFIG)
LOGS = grid.logs_dir(CONFIG)
KEY = "{dataset}/{model}/{sampler}/T{timesteps}/seed{seed}"
RUN = f"{OUT}/runs/{KEY}"


wildcard_constraints:
    dataset="|".join(sorted({p.dataset for p in POINTS}) or ["none"]),
    model="|".join(sorted({p.model for p in POINTS}) or ["none"]),
    sampler="|".join(sorted({p.sampler for p in POINTS}) or ["none"]),
    timesteps=r"\d+",
    seed=r"\d+",


def point_of(wildcards):
    return grid.RunPoint(wildcards.dataset, wildcards.model, wildcards.sampler, int(wildcards.timesteps),
                         int(wildcards.seed))


def run_key(wildcards):
    return point_of(wildcards).key


def resources_of(kind):
    """The preset's resources for a rule kind, in the names the profiles map to the scheduler."""
    r = RESOURCES[kind]
    return {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "gpu": r["gpu"]}


def track_command(stage, out_dir, wildcards):
    """Mirror a finished stage into MLflow (store, experiment and preset from the environment above);
    `esvae_pipeline track` exits 0 even when tracking is unavailable."""
    return f"python -m esvae_pipeline track --stage {stage} --dir {out_dir} --key {run_key(wildcards)}"


def tracked(stage, output_name):
    """params function: the track command for the folder of ``output.<output_name>``."""
    return lambda wildcards, output: track_command(stage, Path(output[output_name]).parent, wildcards)


def init_tracking():
    """Create the MLflow store and experiment once, before any job logs to it (SQLite cannot be
    created concurrently). A failure here only means jobs will report "tracking skipped"."""
    from esvae_pipeline.tracking import init_store

    try:
        experiment_id = init_store(TRACKING_URI, CONFIG["experiment"])
        print(f"MLflow: experiment {CONFIG['experiment']!r} (id {experiment_id}) at {TRACKING_URI}", file=sys.stderr)
    except Exception as exc:
        print(f"MLflow: tracking unavailable ({type(exc).__name__}: {exc}); jobs will still write their files",
              file=sys.stderr)


# Shown first in the Snakemake report (category "1. Tables", with the claims), as rendered tables.
REPORT_TABLES = ("table1", "costs")


def table_outputs():
    """Every table's csv/md/tex/html, less the html of REPORT_TABLES (report items of the report rule)."""
    return [f"{OUT}/tables/{name}.{ext}" for name in TABLES for ext in ("csv", "md", "tex", "html")
            if not (ext == "html" and name in REPORT_TABLES)]


def figure_outputs():
    return [f"{OUT}/figures/{name}.png" for name in FIGURES] + [
        f"{OUT}/figures/{kind}_{d}.png" for kind in ("grids", "perturbations") for d in MAIN_DATASETS]


def run_outputs(stage, filename):
    return [f"{OUT}/runs/{p.key}/{stage}/{filename}" for p in POINTS]


def all_outputs():
    return (run_outputs("train", "checkpoint.pt") + run_outputs("evaluate", "metrics.json")
            + run_outputs("probe", "probes.json") + table_outputs() + figure_outputs())
