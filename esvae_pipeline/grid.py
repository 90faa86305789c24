"""The benchmark grid: presets, their validation, and the runs they expand to.

Used by the Snakemake workflow (``workflow/rules/common.smk``) and by ``python -m esvae_pipeline report``, so
the runs the workflow plans and the runs the tables expect are the same list.

A *run point* is one trained model: (dataset, model, sampler, T, seed). Its folder, under
``results/<preset>/runs/``, is ``{dataset}/{model}/{sampler}/T{timesteps}/seed{seed}`` -- the path grammar
the workflow's outputs, ``logs/`` and ``benchmarks/`` share. A point can belong to several
experiments (the main table's ESVAE at T=16 is also the T ablation's T=16 point); it is trained once.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional

from esvae.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = REPO_ROOT / "config" / "presets"
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
EXPERIMENTS = ("main", "ablation_timesteps", "ablation_sampler")
ANN_LATENT = "gaussian"  # the sampler wildcard of models without a pluggable spike sampler
RUN_PATTERN = re.compile(
    r"^(?P<dataset>[^/]+)/(?P<model>[^/]+)/(?P<sampler>[^/]+)/T(?P<timesteps>\d+)/seed(?P<seed>\d+)$"
)


@dataclass(frozen=True, order=True)
class RunPoint:
    dataset: str
    model: str
    sampler: str
    timesteps: int
    seed: int

    @property
    def key(self) -> str:
        """``fashion/esvae/poisson/T16/seed0``: the folder under ``results/<preset>/runs/``
        (and ``logs/<preset>/``, ``benchmarks/``)."""
        return f"{self.dataset}/{self.model}/{self.sampler}/T{self.timesteps}/seed{self.seed}"

    @classmethod
    def from_key(cls, key: str) -> "RunPoint":
        match = RUN_PATTERN.match(key.strip("/"))
        if not match:
            raise ConfigError(f"not a run folder key: {key!r}; expected dataset/model/sampler/T<n>/seed<n>")
        g = match.groupdict()
        return cls(g["dataset"], g["model"], g["sampler"], int(g["timesteps"]), int(g["seed"]))

    def wildcards(self) -> Dict[str, str]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "sampler": self.sampler,
            "timesteps": str(self.timesteps),
            "seed": str(self.seed),
        }


# -- presets and validation -------------------------------------------------------------------------


def _yaml():
    import yaml

    return yaml


def preset_names(presets_dir: Optional[Path] = None) -> List[str]:
    return sorted(p.stem for p in Path(presets_dir or PRESETS_DIR).glob("*.yaml"))


def load_preset(name: str, presets_dir: Optional[Path] = None) -> dict:
    presets_dir = Path(presets_dir or PRESETS_DIR)
    path = presets_dir / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"config key 'preset': unknown preset {name!r}; expected one of: "
            f"{', '.join(preset_names(presets_dir))} (files in {presets_dir})"
        )
    with open(path) as fh:
        return _yaml().safe_load(fh) or {}


def merge(base: Mapping, override: Mapping) -> dict:
    """``override`` on top of ``base``; nested mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config(user: Mapping, presets_dir: Optional[Path] = None, schema_path: Optional[Path] = None) -> dict:
    """The preset named by ``user['preset']`` (default ``cpu``) with the user's keys on top, validated.

    ``user`` is Snakemake's ``config``: the default ``config/config.yaml`` plus any ``--configfile``
    and ``--config`` values. Raises :class:`ConfigError` naming the offending key.
    """
    name = user.get("preset", "cpu")
    if not isinstance(name, str):
        raise ConfigError(f"config key 'preset': expected a preset name, got {name!r}")
    config = merge(load_preset(name, presets_dir), user)
    validate_config(config, schema_path)
    return config


def _key_path(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate_config(config: Mapping, schema_path: Optional[Path] = None) -> None:
    """JSON-schema validation plus the checks a schema cannot express (model x sampler pairs).

    Every error names the key, e.g. ``config key main.models[1]: 'vae' is not one of [...]``.
    """
    import jsonschema

    with open(schema_path or SCHEMA_PATH) as fh:
        schema = _yaml().safe_load(fh)
    validator = jsonschema.Draft202012Validator(schema)
    as_json = json.loads(json.dumps(dict(config)))  # YAML's integer keys (epochs per T) as JSON's strings
    errors = sorted(validator.iter_errors(as_json), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for error in errors[:10]:
            where = _key_path(error.absolute_path)
            if error.validator == "additionalProperties":
                lines.append(
                    f"config key {where}: {error.message} (allowed: "
                    f"{', '.join(sorted(error.schema.get('properties', {})))})"
                )
            else:
                lines.append(f"config key {where}: {error.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    published = config["evaluate"].get("fad_published_dir")
    if published and not Path(published).is_dir():
        raise ConfigError(
            f"config key evaluate.fad_published_dir: {published} is not a folder (copy the FSVAE/ESVAE "
            "authors' metrics/ folder there: stat_checkpoints/<dataset>_<D>.pth and "
            "stats/<dataset>_test_<D>.npz), or set it to null"
        )
    from esvae.models import model_entry

    for i, model in enumerate(config["ablation_timesteps"]["models"]):
        if not model_entry(model).time_axis:
            raise ConfigError(
                f"config key ablation_timesteps.models[{i}]: {model!r} has no time axis (T is 1); "
                "leave it out of the T ablation"
            )
    for model in config["ablation_sampler"]["models"]:
        if not model_entry(model).samplers:
            raise ConfigError(f"config key ablation_sampler.models: {model!r} has no pluggable latent sampler")
    accepted = {s for m in config["ablation_sampler"]["models"] for s in model_entry(m).samplers}
    for i, sampler in enumerate(config["ablation_sampler"]["samplers"]):
        if sampler not in accepted:
            raise ConfigError(
                f"config key ablation_sampler.samplers[{i}]: no model in ablation_sampler.models "
                f"({', '.join(config['ablation_sampler']['models'])}) takes the sampler {sampler!r}"
            )


# -- the grid -----------------------------------------------------------------------------------------


def default_sampler(model: str) -> str:
    """The model's paper latent: its first registered sampler, ``gaussian`` for the ANN VAE."""
    from esvae.models import model_entry

    samplers = model_entry(model).samplers
    return samplers[0] if samplers else ANN_LATENT


def _timesteps_for(model: str, timesteps: int) -> int:
    from esvae.models import model_entry

    return timesteps if model_entry(model).time_axis else 1  # the ANN VAE has no time axis (T=1)


def seeds_for(config: Mapping, experiment: str, dataset: str) -> List[int]:
    """The seeds of ``experiment`` on ``dataset``: the experiment's own ``seeds`` (a list, or a
    mapping ``{default: [...], <dataset>: [...]}``) when it has one, else the top-level ``seeds``."""
    seeds = config[experiment].get("seeds", config["seeds"])
    if isinstance(seeds, Mapping):
        seeds = seeds.get(dataset, seeds.get("default", config["seeds"]))
    return list(seeds)


def experiment_points(config: Mapping) -> Dict[str, List[RunPoint]]:
    """Run points per experiment (``main``, ``ablation_timesteps``, ``ablation_sampler``), sorted."""
    from esvae.models import model_entry

    out: Dict[str, set] = {name: set() for name in EXPERIMENTS}
    main = config["main"]
    for d in main["datasets"]:
        for m in main["models"]:
            for s in seeds_for(config, "main", d):
                out["main"].add(RunPoint(d, m, default_sampler(m), _timesteps_for(m, main["timesteps"]), s))
    abl = config["ablation_timesteps"]
    for d in abl["datasets"]:
        for m in abl["models"]:
            for t in abl["timesteps"]:
                for s in seeds_for(config, "ablation_timesteps", d):
                    out["ablation_timesteps"].add(RunPoint(d, m, default_sampler(m), t, s))
    abl = config["ablation_sampler"]
    for d in abl["datasets"]:
        for m in abl["models"]:
            for sampler in abl["samplers"]:
                if sampler in model_entry(m).samplers:
                    for s in seeds_for(config, "ablation_sampler", d):
                        out["ablation_sampler"].add(RunPoint(d, m, sampler, abl["timesteps"], s))
    return {name: sorted(points) for name, points in out.items()}


def point_tables(experiments: Mapping[str, List[RunPoint]]) -> Dict[RunPoint, List[str]]:
    """Each run point's experiments (tables) from :func:`experiment_points`: a point can be in several
    (the main table and the T ablation share T = 16)."""
    out: Dict[RunPoint, List[str]] = {}
    for name, points in experiments.items():
        for point in points:
            out.setdefault(point, []).append(name)
    return out


def all_points(config: Mapping) -> List[RunPoint]:
    return sorted({p for points in experiment_points(config).values() for p in points})


def datasets(config: Mapping) -> List[str]:
    return sorted({p.dataset for p in all_points(config)})


def _per_model(value, model: str):
    """A preset value that is either one value for every model or ``{default: v, <model>: v}``."""
    if isinstance(value, Mapping):
        return value.get(model, value.get("default"))
    return value


def epochs_for(config: Mapping, model: str, timesteps: Optional[int] = None, dataset: Optional[str] = None) -> int:
    """Epochs of ``model``: ``train.epochs[model]`` (else ``default``). A model's entry may itself be a
    mapping for a schedule that depends on the run point: keys T (``16: 2``) or a dataset
    (``mnist5k: 10``), looked up in that order, else its ``default``."""
    value = _per_model(config["train"]["epochs"], model)
    if isinstance(value, Mapping):
        for key in (timesteps, str(timesteps), dataset):
            if key is not None and key in value:
                value = value[key]
                break
        else:
            value = value["default"]
    return int(value)


def batch_size_for(config: Mapping, model: str) -> Optional[int]:
    """``train.batch_size`` for ``model`` (an int, or ``{default, <model>}``); None = the paper's."""
    value = _per_model(config["train"].get("batch_size"), model)
    return int(value) if value else None


def train_args(config: Mapping, point: RunPoint) -> List[str]:
    """Arguments of ``python -m esvae train`` for ``point`` (output folder and environment excluded)."""
    from esvae.models import model_entry

    train = config["train"]
    args = [
        "--model",
        point.model,
        "--dataset",
        point.dataset,
        "--seed",
        str(point.seed),
        "--epochs",
        str(epochs_for(config, point.model, point.timesteps, point.dataset)),
        "--train-subset",
        str(train["train_subset"]),
        "--test-subset",
        str(train["test_subset"]),
    ]
    entry = model_entry(point.model)
    if entry.time_axis:
        args += ["--timesteps", str(point.timesteps)]
    if entry.samplers:
        args += ["--sampler", point.sampler]
    batch = batch_size_for(config, point.model)
    if batch:
        args += ["--batch-size", str(batch)]
    args += ["--lr-rule", train.get("lr_rule", "paper_effective")]
    return args


def train_cost(config: Mapping, point: RunPoint) -> int:
    """A rough relative cost of training ``point`` (for the scheduler's longest-first order, 0-100):
    epochs x T, FSVAE/TAID counted 1.5x for their posterior/prior networks, the ANN VAE as T = 1."""
    from esvae.models import model_entry

    weight = 1.5 if point.model in ("fsvae", "taid") else 1.0
    t = point.timesteps if model_entry(point.model).time_axis else 1
    return min(100, int(epochs_for(config, point.model, point.timesteps, point.dataset) * t * weight))


def published_fad_inputs(config: Mapping, dataset: str) -> List[str]:
    """The published FAD files of ``dataset`` that exist under ``evaluate.fad_published_dir`` (rule
    inputs, so that replacing them re-runs the evaluations); none when the key is unset."""
    folder = config["evaluate"].get("fad_published_dir")
    if not folder:
        return []
    from esvae.metrics.fad import published_dataset, published_files

    if published_dataset(dataset) is None:
        return []
    return [str(p) for p in published_files(folder, dataset) if p.is_file()]


def published_fad_args(config: Mapping) -> str:
    """``--fad-published-dir DIR`` when the preset names the authors' files (docs/metrics.md section 6)."""
    folder = config["evaluate"].get("fad_published_dir")
    return f"--fad-published-dir {shlex.quote(str(folder))}" if folder else ""


def environment_args(config: Mapping) -> List[str]:
    """``--device`` and ``--download`` for every rule (the data root travels as ``$ESVAE_DATA``)."""
    args = ["--device", config.get("device", "auto")]
    if config.get("download"):
        args.append("--download")
    return args


def expected_train_settings(config: Mapping, point: RunPoint) -> Dict[str, object]:
    """What ``train_config`` / ``model_config`` of a run's ``config.json`` must hold for ``point``
    under ``config`` (keys as stored there)."""
    from esvae.models import model_entry

    train = config["train"]
    out = {
        "train_config.epochs": epochs_for(config, point.model, point.timesteps, point.dataset),
        "train_config.seed": point.seed,
        "train_config.train_subset": train["train_subset"],
        "train_config.test_subset": train["test_subset"],
        "train_config.lr_rule": train.get("lr_rule", "paper_effective"),
    }
    batch = batch_size_for(config, point.model)
    if batch:
        out["train_config.batch_size"] = batch
    entry = model_entry(point.model)
    if entry.time_axis:
        out["model_config.timesteps"] = point.timesteps
    if entry.samplers:
        out["model_config.sampler"] = point.sampler
    return out


def settings_mismatch(config: Mapping, point: RunPoint, run_config: Mapping) -> Optional[str]:
    """None when the run folder's ``config.json`` was trained as ``config`` asks for ``point``;
    otherwise which settings differ (e.g. a folder left by another preset)."""
    diffs = []
    for dotted, want in expected_train_settings(config, point).items():
        section, key = dotted.split(".")
        have = (run_config.get(section) or {}).get(key)
        if key == "lr_rule" and have is None:  # runs from before the rule existed used the paper's effective LR
            have = "paper_effective"
        if have != want:
            diffs.append(f"{dotted}={have!r} (preset: {want!r})")
    if run_config.get("model") != point.model or run_config.get("dataset") != point.dataset:
        diffs.append(f"model/dataset {run_config.get('model')}/{run_config.get('dataset')}")
    return "; ".join(diffs) or None


def export_job_environment(repo: Path, uri: str, config: Mapping) -> None:
    """Environment variables every job inherits (locally and through SLURM), set by the workflow:
    the interpreter running snakemake first on PATH (it has esvae installed), the repository on
    PYTHONPATH (for --use-conda envs, which do not install esvae), the MLflow store, experiment,
    preset, resolved configuration and results folder for ``esvae_pipeline track`` (which derives a
    run's table tags and dataset inputs from them), the checkpoint interval of ``esvae train``, and
    the data root.
    Environment, not rule params: Snakemake re-runs a job whose params change, and none of these
    changes a result."""
    import json
    import os
    import sys

    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    os.environ["ESVAE_MLFLOW_URI"] = uri
    os.environ["ESVAE_MLFLOW_EXPERIMENT"] = config["experiment"]
    os.environ["ESVAE_PRESET"] = config["preset"]
    os.environ["ESVAE_CONFIG"] = json.dumps(config, sort_keys=True)
    os.environ["ESVAE_RESULTS"] = results_dir(config)
    checkpoint = config.get("checkpoint") or {}
    os.environ["ESVAE_CHECKPOINT_EVERY"] = str(checkpoint.get("every_steps", 0))
    os.environ["ESVAE_CHECKPOINT_MINUTES"] = str(checkpoint.get("minutes", 10))
    if config.get("data_root"):
        os.environ["ESVAE_DATA"] = str(Path(config["data_root"]).resolve())


def results_dir(config: Mapping) -> str:
    """``results/<preset>``: every file a preset's run writes (relative to the working directory),
    so presets never overwrite each other's results."""
    return f"results/{config['preset']}"


def logs_dir(config: Mapping) -> str:
    """``logs/<preset>``: the jobs' log files."""
    return f"logs/{config['preset']}"


def tracking_uri(config: Mapping, results: Optional[Path] = None) -> str:
    """The MLflow store: ``tracking_uri`` if set, else SQLite at ``results/<preset>/mlflow.db`` (absolute path)."""
    if config.get("tracking_uri"):
        return str(config["tracking_uri"])
    results = Path(results or results_dir(config)).resolve()
    return f"sqlite:///{results / 'mlflow.db'}"
