"""``python -m esvae_pipeline report``: the paper's tables and figures from the files under ``results/<preset>/``.

Reads only ``results/<preset>/config.json`` (the resolved preset the workflow ran), the run folders
``results/<preset>/runs/<dataset>/<model>/<sampler>/T<T>/seed<seed>/{train,evaluate,probe}/`` and the
published Table I shipped with the package (``esvae/resources/paper_table1.csv``). Writes

* ``results/<preset>/tables/``: ``table1`` (paper rows next to this run's rows), ``ablation_timesteps``,
  ``ablation_sampler``, ``probes``, ``costs`` (parameters, firing rates, synaptic operations, energy),
  ``training``, ``timings`` and
  ``runs`` (which planned runs have which results) -- each as ``.csv``, ``.md`` and ``.tex``;
* ``results/<preset>/figures/``: ``metrics_vs_timesteps.png``, ``sampler_ablation.png``, ``robustness.png``,
  ``probe_accuracy.png``, ``training_curves.png`` and ``grids_<dataset>.png``.

Every table names its conditions (preset, N, split, seeds); numbers are the mean over seeds, with
``± std`` when there are several. A planned run without results is listed as missing in ``runs``
and left out of the other tables, never filled in.
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from esvae.errors import EsvaeError
from esvae.files import write_text_atomic
from esvae.metrics.energy import ENERGY_ASSUMPTIONS, energy_pj
from esvae.models.registry import model_label
from esvae.results import SCALAR_METRICS, read_result

from . import grid

log = logging.getLogger(__name__)
PAPER_TABLE = Path(str(files("esvae") / "resources" / "paper_table1.csv"))  # shipped with the library
PAPER_DATASET = {"mnist": "mnist", "mnist5k": "mnist", "fashion": "fashion", "cifar10": "cifar10", "celeba": "celeba"}
TABLES = ("table1", "training", "ablation_timesteps", "ablation_sampler", "probes", "costs", "runs", "timings")
FIGURES = ("metrics_vs_timesteps", "sampler_ablation", "robustness", "probe_accuracy", "training_curves")


class ReportError(EsvaeError):
    """The results folder cannot be compiled (no config.json, unreadable result file)."""


@dataclass
class RunResults:
    point: grid.RunPoint
    train: Optional[dict] = None
    evaluate: Optional[dict] = None
    probe: Optional[dict] = None
    history: List[Dict[str, float]] = field(default_factory=list)
    folder: Optional[Path] = None
    mismatch: Optional[str] = None  # settings of the folder's training that differ from the preset's


def _read_json(path: Path, kind: str) -> Optional[dict]:
    """A result file checked by :func:`esvae.results.read_result`; None when the job has not run."""
    return read_result(path, kind) if path.is_file() else None


def _read_history(path: Path) -> List[Dict[str, float]]:
    from esvae.history import read_history

    return read_history(path) if path.is_file() else []


def load_results(results_dir: Path, points: List[grid.RunPoint], config: Optional[Mapping] = None) -> List[RunResults]:
    """The result files of each planned point. With ``config``, a folder trained with other settings
    (another preset's epochs or subsets) is marked ``mismatch`` and kept out of the tables."""
    out = []
    for point in points:
        folder = results_dir / "runs" / point.key
        r = RunResults(
            point,
            _read_json(folder / "train" / "metrics.json", "train"),
            _read_json(folder / "evaluate" / "metrics.json", "evaluate"),
            _read_json(folder / "probe" / "probes.json", "probe"),
            _read_history(folder / "train" / "history.tsv"),
            folder,
        )
        run_config = _read_json(folder / "train" / "config.json", "config")
        if config is not None and r.train is not None:
            r.mismatch = (
                "no train/config.json" if run_config is None else grid.settings_mismatch(config, point, run_config)
            )
            if r.mismatch:
                log.warning(
                    "report: %s was trained with other settings than preset %s asks for (%s); left out of the tables",
                    point.key,
                    config.get("preset"),
                    r.mismatch,
                )
        out.append(r)
    return out


def _value(block) -> float:
    if isinstance(block, Mapping) and isinstance(block.get("value"), (int, float)):
        return float(block["value"])
    return math.nan


def _ref(block) -> Optional[str]:
    """``FID@500 vs test[:1000]``: a sample-based metric's name and its reference set."""
    if not isinstance(block, Mapping) or block.get("name") is None:
        return None
    ref = block.get("reference_split")
    return f"{block['name']} vs {ref} (N={block.get('n_reference')})" if ref else block["name"]


def run_row(r: RunResults) -> Dict[str, object]:
    """One run's numbers, flat (NaN where a metric is missing or was refused), with the conditions
    (N, split, reference set) of each. The MSE is the evaluation's (over ``evaluate.test_subset``),
    never the per-epoch MSE of training (another N): a run not yet evaluated has no MSE here."""
    p = r.point
    row: Dict[str, Any] = {
        "dataset": p.dataset,
        "model": p.model,
        "sampler": p.sampler,
        "T": p.timesteps,
        "seed": p.seed,
    }
    ev, tr, pr = r.evaluate or {}, r.train or {}, r.probe or {}
    mse = ev.get("reconstruction_mse") or {}
    row["mse"] = _value(mse)
    row["mse_n"] = mse.get("n")
    row["mse_split"] = mse.get("split")
    row["train_images"] = tr.get("train_images")
    row["epochs"] = tr.get("epochs")
    for key in ("steps", "train_seconds", "lr", "batch_size"):
        row[key] = tr[key] if isinstance(tr.get(key), (int, float)) else math.nan
    row["lr_rule"] = tr.get("lr_rule")
    row["device"] = tr.get("device_name") or tr.get("device")
    row["baseline_mse"] = _value(tr.get("baseline_mean_image_mse"))
    for m in SCALAR_METRICS[1:]:  # the MSE (first) is above, with its N and split
        row[m.column_name] = _value(ev.get(m.key))
    row["fid_n"] = (ev.get("fid") or {}).get("name")
    row["fid_ref"] = _ref(ev.get("fid"))
    row["fid_clean_ref"] = _ref(ev.get("fid_clean"))
    row["fad_ref"] = _ref(ev.get("fad"))
    published = ev.get("fad_published") or {}
    row["fad_published_label"] = published.get("label") or (
        f"refused ({published['refused'].split(':')[0]})" if published.get("refused") else None
    )
    kid = ev.get("kid") or {}
    row["kid_ref"] = f"{_ref(kid)}, subsets of {kid.get('subset_size')}" if _ref(kid) else None
    row["is_refused"] = bool((ev.get("inception_score") or {}).get("refused"))
    params = ev.get("parameters") or {}
    row["parameters"] = params.get("total", tr.get("parameters"))
    costs = ev.get("spike_costs") or {}
    row["firing_rate"] = costs["mean_firing_rate"] if costs.get("mean_firing_rate") is not None else math.nan
    path = costs.get("reconstruction_path") or {}
    row["synops"] = path.get("synops", math.nan)
    row["macs"] = path.get("macs", math.nan)
    row["energy_uj"] = energy_pj(row["synops"], row["macs"]) / 1e6  # NaN without counts
    row["spikes_split"] = costs.get("split")
    timing = ev.get("sampling_time") or {}
    row["sampling_ms"] = timing.get("milliseconds_per_image", math.nan)
    row["sampling_n"] = timing.get("n")
    info = pr.get("information_retention") or {}
    row["linear_probe"] = _value(info.get("linear_probe"))
    row["probe_n_train"] = (info.get("linear_probe") or {}).get("n_train")
    row["probe_split"] = (info.get("linear_probe") or {}).get("test_split")
    row["mse_sampled"] = _value(info.get("mse_sampled"))
    row["mse_deterministic"] = _value(info.get("mse_deterministic"))
    row["probe_mse_split"] = (info.get("mse_sampled") or {}).get("split")
    for rob in (pr.get("decoder_robustness") or {}).get("rows") or []:  # None for the ANN VAE
        row[f"rob_{rob['condition']}"] = rob["mse"]
    # against the trivial baseline on the same images: the training run's final test MSE and its
    # mean-training-image MSE are both over the training's test subset (evaluate's MSE may use more)
    train_mse = _value(tr.get("reconstruction_mse"))
    same = (tr.get("baseline_mean_image_mse") or {}).get("n") == (tr.get("reconstruction_mse") or {}).get("n")
    row["mse_vs_mean_image"] = train_mse / row["baseline_mse"] if same and row["baseline_mse"] else math.nan
    row["baseline_split"] = (tr.get("reconstruction_mse") or {}).get("split")
    return row


# -- formatting -----------------------------------------------------------------------------------

DIGITS = {
    "fid_clean": 1,
    "fad_published": 2,
    "energy_uj": 3,
    "mse_vs_mean_image": 3,
    "baseline_mse": 4,
    "steps": 0,
    "train_seconds": 0,
    "lr": 6,
    "mse": 4,
    "fid": 1,
    "kid": 3,
    "fad": 2,
    "inception_score": 2,
    "linear_probe": 3,
    "firing_rate": 3,
    "mse_sampled": 4,
    "mse_deterministic": 4,
    "sampling_ms": 2,
    "parameters": 0,
    "synops": 0,
    "macs": 0,
}
COUNTS = ("parameters", "synops", "macs", "steps", "batch_size")  # printed in full, without ± when fixed
SETTINGS = ("lr", "baseline_mse", "energy_uj")  # no ± when it does not vary (the ANN VAE's energy: a MAC count)


def _fmt(mean, std, digits: int, count: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "--"
    if count:
        text = f"{mean:,.0f}"
        return (
            text if std is None or (isinstance(std, float) and math.isnan(std)) or std == 0 else text + f" ± {std:,.0f}"
        )
    text = f"{mean:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std:.{digits}f}"
    return text


def aggregate(df, by: List[str], columns: List[str], labels: Sequence[str] = ()):
    """Mean and std (over seeds, ddof 1; NaN with one seed) of ``columns`` per ``by`` group, the
    number of seeds, and the distinct values of each condition column in ``labels``."""
    grouped = df.groupby(by, sort=True, dropna=False)
    out = grouped[columns].mean()
    std = grouped[columns].std(ddof=1)
    for c in columns:
        out[f"{c}_std"] = std[c]
    out["seeds"] = grouped["seed"].nunique()
    for c in labels:
        out[c] = grouped[c].agg(lambda v: "; ".join(sorted({str(x) for x in v if x is not None and x == x})) or "--")
    return out.reset_index()


def display(df, columns: Mapping[str, str]):
    """Text rendering: ``{source column: header}``; numbers as ``mean ± std``, counts in full."""
    import pandas as pd

    out = pd.DataFrame(index=df.index)
    for col, header in columns.items():
        if f"{col}_std" in df.columns:
            out[header] = [
                _fmt(m, None if col in SETTINGS and sd == 0 else sd, DIGITS.get(col, 4), col in COUNTS)
                for m, sd in zip(df[col], df[f"{col}_std"])
            ]
        else:
            out[header] = [("--" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)) for v in df[col]]
    return out


def html_page(title: str, caption: str, table, empty: str) -> str:
    """A small standalone page: the table (a DataFrame; ``empty`` when it has no rows) with its caption
    (the Snakemake report shows it as is)."""
    table_html = table.to_html(index=False, escape=True, border=0) if len(table) else f"<p>{html.escape(empty)}</p>"
    style = (
        "body{font-family:sans-serif;margin:1em}caption,p{text-align:left;margin:.5em 0}"
        "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "th{background:#f3f3f3}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head>\n<body><h3>{html.escape(title)}</h3><p>{html.escape(caption)}</p>\n"
        f"{table_html}\n</body></html>\n"
    )


def write_table(df, text_df, out_dir: Path, name: str, caption: str) -> List[Path]:
    """``name.csv`` (numbers, full precision), ``name.md``, ``name.tex`` and ``name.html`` (text, with
    the caption)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.csv", out_dir / f"{name}.md", out_dir / f"{name}.tex", out_dir / f"{name}.html"]
    write_text_atomic(paths[0], df.to_csv(index=False))
    md = (
        f"**{name}**: {caption}\n\n" + (text_df.to_markdown(index=False) if len(text_df) else "(no results yet)") + "\n"
    )
    write_text_atomic(paths[1], md)
    tex_body = text_df.to_latex(index=False, escape=True) if len(text_df) else "% no results yet\n"
    tex = (
        "% generated by python -m esvae_pipeline report\n\\begin{table}[t]\n\\centering\n\\caption{"
        + _latex_escape(caption)
        + "}\n\\label{tab:"
        + name
        + "}\n"
        + tex_body
        + "\\end{table}\n"
    )
    write_text_atomic(paths[2], tex.replace("±", "$\\pm$"))
    write_text_atomic(paths[3], html_page(name, caption, text_df, "(no results yet)"))
    return paths


def _latex_escape(text: str) -> str:
    for a, b in (
        ("\\", "\\textbackslash{}"),
        ("&", "\\&"),
        ("%", "\\%"),
        ("$", "\\$"),
        ("#", "\\#"),
        ("_", "\\_"),
        ("{", "\\{"),
        ("}", "\\}"),
        ("~", "\\textasciitilde{}"),
        ("^", "\\textasciicircum{}"),
    ):
        text = text.replace(a, b)
    return text


def machine_label(config: Mapping) -> str:
    prov = config.get("_provenance") or {}
    parts = [prov.get("cpu"), prov.get("gpu"), f"commit {prov['git_commit'][:12]}" if prov.get("git_commit") else None]
    return ", ".join(p for p in parts if p) or "machine not recorded"


# -- tables ---------------------------------------------------------------------------------------

PAPER_CONDITIONS = (
    "published: MSE over the test split as the mean of per-batch means; FID (clean-fid protocol, "
    "the FID-clean column) over 5,000 samples vs the {ref}; FAD with the FSVAE authors' autoencoder "
    "(the published-AE column); IS from torchvision's ImageNet Inception on [0, 255] inputs (not "
    "torch-fidelity's)"
)


def paper_rows(datasets: List[str]):
    import pandas as pd

    paper = pd.read_csv(PAPER_TABLE)
    rows = []
    for dataset in datasets:
        ref = "validation split" if dataset == "celeba" else "test split"
        note = PAPER_CONDITIONS.format(ref=ref) + (
            "; the paper's dataset is full MNIST" if dataset == "mnist5k" else ""
        )
        for _, p in paper[paper["dataset"] == PAPER_DATASET[dataset]].iterrows():
            quoted = "quoted" in str(p["source"])
            row_note = note + (
                "; quoted by the ESVAE paper from its source, whose own protocol may differ" if quoted else ""
            )
            rows.append(
                {
                    "dataset": dataset,
                    "model": p["model"],
                    "source": f"paper ({p['source']})",
                    "mse": p["reconstruction_mse"],
                    "inception_score": p["inception_score"],
                    # the paper's FID is clean-fid's protocol and its FAD the authors' autoencoder's: they
                    # stand in the columns of those protocols, not beside torch-fidelity's FID or our FAD
                    "fid": math.nan,
                    "fid_clean": p["fid"],
                    "fad": math.nan,
                    "fad_published": p["fad"],
                    "kid": math.nan,
                    "conditions": row_note,
                }
            )
    return pd.DataFrame(rows)


def _distinct(values) -> str:
    return "; ".join(sorted({str(v) for v in values if v is not None and v == v})) or "n/a"


def _conditions(group) -> str:
    def ints(column):
        return _distinct(group[column].map(lambda v: int(v) if v == v else None))

    parts = [
        f"MSE over {_distinct(group['mse_split'])}",
        f"FID: {_distinct(group['fid_ref'])}",
        f"FID-clean: {_distinct(group['fid_clean_ref'])}",
        f"FAD: {_distinct(group['fad_ref'])}",
        f"published-AE FAD: {_distinct(group['fad_published_label'])}",
        f"KID: {_distinct(group['kid_ref'])}",
        f"T={_distinct(group['T'])}",
        f"trained on {ints('train_images')} images x {ints('epochs')} epochs = {ints('steps')} steps of batch "
        f"{ints('batch_size')}, LR "
        f"{_distinct(group['lr'].map(lambda v: f'{v:g}' if v == v else None))} ({_distinct(group['lr_rule'])}) "
        f"on {_distinct(group['device'])}",
    ]
    if group["is_refused"].any():
        parts.append("IS refused (no Inception classifier weights)")
    return ", ".join(parts)


def published_fad_header(frame) -> str:
    """The published-AE FAD column's header, naming each dataset's files by their SHA-256 prefixes."""
    labels: Dict[str, set] = {}
    datasets = sorted(set(frame["dataset"])) if len(frame) else []
    if len(frame) and "fad_published_label" in frame:
        for dataset, label, value in zip(frame["dataset"], frame["fad_published_label"], frame["fad_published"]):
            if value == value:  # a computed value (NaN when refused): its label names the files
                labels.setdefault(dataset, set()).add(label)
    if not labels:
        return "FAD (authors' AE; files not supplied)"
    missing = [d for d in datasets if d not in labels]
    return (
        "FAD (authors' AE: "
        + "; ".join(f"{d} {', '.join(sorted(v))}" for d, v in sorted(labels.items()))
        + (f"; {', '.join(missing)}: not supplied" if missing else "")
        + ")"
    )


def table1(frame, preset: str, main_points):
    import pandas as pd

    keys = {p.key for p in main_points}
    ours = frame[frame["key"].isin(keys) & frame["mse"].notna()]
    datasets = sorted({p.dataset for p in main_points})
    metric_cols = [
        "mse",
        "mse_vs_mean_image",
        "inception_score",
        "fid",
        "fid_clean",
        "fad",
        "fad_published",
        "kid",
        "steps",
        "train_seconds",
    ]
    rows = []
    for (dataset, model), group in ours.groupby(["dataset", "model"], sort=True):
        seeds = sorted(group["seed"].unique())
        row = {
            "dataset": dataset,
            "model": model_label(model),
            "source": f"this run ({preset}, N={_distinct(group['mse_n'].map(lambda v: int(v)))}, "
            f"seeds {','.join(map(str, seeds))})",
            "conditions": _conditions(group),
        }
        for c in metric_cols:
            row[c] = group[c].mean()
            row[f"{c}_std"] = group[c].std(ddof=1) if len(seeds) > 1 else math.nan
        rows.append(row)
    table = pd.concat([paper_rows(datasets), pd.DataFrame(rows)], ignore_index=True)
    order = {name: i for i, name in enumerate(["SWGAN", "SGAD", "ANN VAE", "FSVAE", "TAID", "ESVAE"])}
    table["_order"] = table["model"].map(lambda m: order.get(m, 99))
    table["_ours"] = table["source"].str.startswith("this run")
    table = table.sort_values(["dataset", "_order", "_ours"]).drop(columns=["_order", "_ours"]).reset_index(drop=True)
    for c in metric_cols:
        if f"{c}_std" not in table:
            table[f"{c}_std"] = math.nan
    return table


def job_timings(results_dir: Path):
    """Snakemake's per-job ``benchmark:`` files under ``results_dir/benchmarks/`` as one frame:
    rule (train/evaluate/probe/fad_autoencoder), run key (or dataset), wall seconds, peak RSS (MB)."""
    import pandas as pd

    rows = []
    root = results_dir / "benchmarks"
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        rel = path.relative_to(root)
        if rel.parts[0] == "runs":
            rule, key = path.stem, "/".join(rel.parts[1:-1])
        else:
            rule, key = "fad_autoencoder" if rel.parts[0] == "fad" else rel.parts[0], path.stem
        try:
            bench = pd.read_csv(path, sep="\t")
            seconds, rss = float(bench["s"].iloc[-1]), float(bench["max_rss"].iloc[-1])
        except Exception as exc:  # a damaged timing file is reported, never fatal to the report
            log.warning("report: %s is not a Snakemake benchmark file (%s); left out of the timings", path, exc)
            continue
        rows.append({"rule": rule, "run": key, "seconds": seconds, "max_rss_mb": rss})
    return pd.DataFrame(rows, columns=["rule", "run", "seconds", "max_rss_mb"])


def timings_table(results_dir: Path):
    """Per rule: jobs, summed and longest wall time, peak RSS; the training rows also per model and T."""
    import pandas as pd

    jobs = job_timings(results_dir)
    out = []
    for rule, group in jobs.groupby("rule", sort=True):
        out.append(
            {
                "rule": rule,
                "what": "all",
                "jobs": len(group),
                "seconds": group["seconds"].sum(),
                "seconds_max": group["seconds"].max(),
                "max_rss_mb": group["max_rss_mb"].max(),
            }
        )
    train = jobs[jobs["rule"] == "train"]
    if len(train):
        parts = train["run"].str.split("/", expand=True)
        train = train.assign(what=parts[0] + "/" + parts[1] + "/" + parts[3])
        for what, group in train.groupby("what", sort=True):
            out.append(
                {
                    "rule": "train",
                    "what": what,
                    "jobs": len(group),
                    "seconds": group["seconds"].sum(),
                    "seconds_max": group["seconds"].max(),
                    "max_rss_mb": group["max_rss_mb"].max(),
                }
            )
    return pd.DataFrame(out, columns=["rule", "what", "jobs", "seconds", "seconds_max", "max_rss_mb"])


def write_claims(frame, main_points, results_dir: Path, config: Mapping, where: str) -> List[Path]:
    """``claims.csv`` and ``claims.md`` in ``results_dir`` (:mod:`esvae_pipeline.claims`) from the main-table runs."""
    import pandas as pd

    from .claims import evaluate_claims, render_markdown

    keys = {p.key for p in main_points}
    part = frame[frame["key"].isin(keys)] if len(frame) else frame
    rows = evaluate_claims(
        part.to_dict("records"),
        sorted({p.dataset for p in main_points}),
        is_refused=bool(len(part)) and bool(part["is_refused"].all()),
    )
    seeds = {
        d: sorted({p.seed for p in main_points if p.dataset == d}) for d in sorted({p.dataset for p in main_points})
    }
    conds = [
        f"Preset `{config.get('preset')}` ({config.get('description', '')}); {where}.",
        "Main-table points only: " + "; ".join(f"{d} seeds {','.join(map(str, s))}" for d, s in seeds.items()) + ".",
    ]
    if len(part):
        conds.append(
            "Conditions per dataset: "
            + "; ".join(f"{d}: {_conditions(g)}" for d, g in part.groupby("dataset", sort=True))
            + "."
        )
    conds.append(
        "A verdict says what holds for this preset's models at this scale, not whether the paper's "
        "converged numbers reproduce."
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, html_path = (results_dir / f"claims.{ext}" for ext in ("csv", "md", "html"))
    write_text_atomic(csv_path, pd.DataFrame(rows).to_csv(index=False))
    write_text_atomic(md_path, render_markdown(rows, "\n".join(conds)))
    write_text_atomic(html_path, html_page("claims", " ".join(conds), pd.DataFrame(rows), "(no claims checked)"))
    return [csv_path, md_path, html_path]


def compile_report(
    results_dir: Path,
    tables_dir: Optional[Path] = None,
    figures_dir: Optional[Path] = None,
    config: Optional[Mapping] = None,
) -> Dict[str, List[Path]]:
    """Write every table and figure; returns ``{"tables": [...], "figures": [...]}``."""
    import pandas as pd

    results_dir = Path(results_dir)
    tables_dir = Path(tables_dir or results_dir / "tables")
    figures_dir = Path(figures_dir or results_dir / "figures")
    if config is None:
        cfg_file = results_dir / "config.json"
        config = _read_json(cfg_file, "preset")
        if config is None:
            raise ReportError(
                f"{cfg_file} not found: it is written by the workflow (snakemake) before any run; "
                "run the workflow, or pass the results folder it wrote"
            )
    preset = config["preset"]
    machine = machine_label(config)
    experiments = grid.experiment_points(config)
    points = grid.all_points(config)
    results = load_results(results_dir, points, config)
    usable = [r for r in results if r.train is not None and not r.mismatch]
    frame = (
        pd.DataFrame([{**run_row(r), "key": r.point.key} for r in usable])
        if usable
        else pd.DataFrame([{**run_row(RunResults(points[0])), "key": None}]).iloc[0:0]
    )
    written: Dict[str, List[Path]] = {"tables": [], "figures": []}
    where = f"preset '{preset}'; {machine}" + (f"; {config['caveat']}" if config.get("caveat") else "")

    # which planned runs have which results
    status = pd.DataFrame(
        [
            {
                "run": r.point.key,
                "experiments": ",".join(n for n, pts in experiments.items() if r.point in pts),
                "trained": r.train is not None and not r.mismatch,
                "evaluated": r.evaluate is not None,
                "probed": r.probe is not None,
                "excluded": r.mismatch or "",
            }
            for r in results
        ]
    )
    done = int((status["trained"] & status["evaluated"] & status["probed"]).sum())
    written["tables"] += write_table(
        status,
        status.astype(str),
        tables_dir,
        "runs",
        f"planned runs ({where}) and their results ({done} of {len(status)} complete; "
        "'excluded': trained with other settings than the preset's, left out of every table)",
    )

    t1 = table1(frame, preset, experiments["main"])
    t1_text = display(
        t1,
        {
            "dataset": "dataset",
            "model": "model",
            "source": "source",
            "mse": "MSE",
            "mse_vs_mean_image": "MSE / mean-image MSE (training's test subset)",
            "inception_score": "IS",
            "fid": "FID (torch-fidelity)",
            "fid_clean": "FID-clean (paper's protocol)",
            "fad": "FAD (our AE)",
            "fad_published": published_fad_header(frame),
            "kid": "KID",
            "steps": "steps",
            "train_seconds": "train s",
            "conditions": "conditions",
        },
    )
    written["tables"] += write_table(
        t1,
        t1_text,
        tables_dir,
        "table1",
        f"Table I layout: published values (paper) next to this run's ({where}; N and "
        "seeds in 'source', splits and sample counts in 'conditions'; mean ± std over "
        "seeds). MSE: images in [-1, 1], mean over test images. Short presets are not "
        "converged: compare models within a source, not across sources.",
    )

    # every run's training schedule and where it got to, against the mean-image floor
    training_by = ["dataset", "model", "sampler", "T"]
    training_cols = ["mse", "baseline_mse", "mse_vs_mean_image", "steps", "batch_size", "lr", "train_seconds"]
    training_labels = ["lr_rule", "device", "mse_split", "baseline_split"]
    training = (
        aggregate(frame, training_by, training_cols, training_labels)
        if len(frame)
        else pd.DataFrame(columns=training_by + training_cols + ["seeds"] + training_labels)
    )
    written["tables"] += write_table(
        training,
        display(
            training,
            {
                **{b: b for b in training_by},
                "mse": "test MSE",
                "baseline_mse": "mean-image MSE",
                "mse_vs_mean_image": "ratio",
                "baseline_split": "ratio and mean image over",
                "steps": "steps",
                "batch_size": "batch",
                "lr": "LR",
                "lr_rule": "LR rule",
                "train_seconds": "train s",
                "device": "device",
                "mse_split": "MSE over",
                "seeds": "seeds",
            },
        ),
        tables_dir,
        "training",
        f"training schedules and the mean-image floor ({where}): 'test MSE' is the evaluation's (over 'MSE over'); "
        "'ratio' is the training run's final test MSE over the MSE of predicting the mean training image for every "
        "test image, both on the training's test images ('ratio and mean image over'); below 1 the model beats that "
        "trivial baseline. Steps, batch, LR and training wall time (test evaluations excluded) per run, mean ± std "
        "over seeds.",
    )

    metric_headers = {
        "mse": "MSE",
        "mse_split": "MSE over",
        "fid": "FID",
        "kid": "KID",
        "fad": "FAD",
        "fid_ref": "FID samples vs reference",
        "firing_rate": "firing rate",
        "linear_probe": "linear probe acc.",
        "probe_split": "probe test split",
        "steps": "steps",
        "train_seconds": "train s",
    }
    numeric = ["mse", "fid", "kid", "fad", "firing_rate", "linear_probe", "steps", "train_seconds"]
    labels = ["mse_split", "fid_ref", "probe_split"]

    def experiment_table(name, by, caption):
        keys = {p.key for p in experiments[name]}
        part = frame[frame["key"].isin(keys)] if len(frame) else frame
        if len(part):
            agg = aggregate(part, by, numeric, labels)
        else:
            agg = pd.DataFrame(columns=by + numeric + [f"{c}_std" for c in numeric] + ["seeds"] + labels)
        text = display(agg, {**{b: b for b in by}, **metric_headers, "seeds": "seeds"})
        written["tables"] += write_table(agg, text, tables_dir, name, caption)

    experiment_table(
        "ablation_timesteps",
        ["dataset", "model", "sampler", "T"],
        f"T ablation ({where}): each spiking model with its paper sampler; MSE from the "
        "evaluation, firing rate on the reconstruction path, linear probe from the probes",
    )
    experiment_table("ablation_sampler", ["dataset", "model", "T", "sampler"], f"latent-sampler ablation ({where})")

    rob_cols = sorted(
        [c for c in frame.columns if c.startswith("rob_")], key=lambda c: (c != "rob_clean", c != "rob_shuffled", c)
    )
    probe_cols = ["linear_probe", "mse_sampled", "mse_deterministic"] + rob_cols + ["steps"]
    probe_part = frame[frame["linear_probe"].notna()] if len(frame) else frame
    probe_by = ["dataset", "model", "sampler", "T"]
    probes = (
        aggregate(probe_part, probe_by, probe_cols, ["probe_split", "probe_mse_split"])
        if len(probe_part)
        else pd.DataFrame(columns=probe_by + probe_cols + ["seeds", "probe_split", "probe_mse_split"])
    )
    probe_headers = {
        "linear_probe": "linear probe acc.",
        "probe_split": "probe test split",
        "mse_sampled": "MSE sampled",
        "mse_deterministic": "MSE deterministic code",
        "probe_mse_split": "MSE over",
        "steps": "training steps",
        **{c: "MSE " + c[4:].replace("noise_", "a=") for c in rob_cols},
    }
    n_train = (
        _distinct(probe_part["probe_n_train"].map(lambda v: int(v) if v == v else None)) if len(probe_part) else "n/a"
    )
    written["tables"] += write_table(
        probes,
        display(probes, {**{b: b for b in probe_by}, **probe_headers, "seeds": "seeds"}),
        tables_dir,
        "probes",
        f"probes ({where}; linear probe fitted on {n_train} training images): information "
        "retention (linear-probe accuracy on the posterior code; MSE with the sampled and "
        "the deterministic code) and decoder robustness (MSE when the latent spike train "
        "is time-shuffled or each bit flipped with probability a; the ANN VAE has none). "
        "This project's protocol, not the paper's (docs/metrics.md section 3).",
    )

    cost_cols = ["parameters", "firing_rate", "synops", "macs", "energy_uj", "sampling_ms"]
    cost_part = frame[frame["synops"].notna()] if len(frame) else frame
    cost_labels = ["spikes_split", "sampling_n"]
    costs = (
        aggregate(cost_part, probe_by, cost_cols, cost_labels)
        if len(cost_part)
        else pd.DataFrame(columns=probe_by + cost_cols + ["seeds"] + cost_labels)
    )
    written["tables"] += write_table(
        costs,
        display(
            costs,
            {
                **{b: b for b in probe_by},
                "parameters": "parameters",
                "firing_rate": "mean firing rate",
                "synops": "synaptic ops / image",
                "macs": "MACs / image",
                "energy_uj": "energy / image (uJ, 45 nm estimate)",
                "spikes_split": "spikes counted on",
                "sampling_ms": "sampling ms / image",
                "sampling_n": "images timed",
                "seeds": "seeds",
            },
        ),
        tables_dir,
        "costs",
        f"model cost ({where}): trainable parameters of the modules used; firing rate and "
        "synaptic operations (input spikes x fan-out + bias adds) on the reconstruction "
        "path, MACs for analog inputs and the readout, per image in eval mode; energy: "
        f"{ENERGY_ASSUMPTIONS}, so it compares models under these assumptions, not on a "
        "chip; sampling time per generated image on the machine that ran the evaluation.",
    )

    written["tables"] += write_claims(frame, experiments["main"], results_dir, config, where)

    timings = timings_table(results_dir)
    total = timings.loc[timings["what"] == "all", "seconds"].sum() if len(timings) else 0.0
    text = timings.copy()
    for c in ("seconds", "seconds_max", "max_rss_mb"):
        text[c] = [f"{v:,.0f}" for v in timings[c]]
    text["jobs"] = timings["jobs"].astype(str)
    written["tables"] += write_table(
        timings,
        text,
        tables_dir,
        "timings",
        f"job wall times from Snakemake's benchmark files ({where}): per rule, and for "
        f"training per dataset/model/T (summed over seeds); {total:,.0f} s of job time "
        "in all (jobs run side by side, so the run's wall time is shorter); peak resident "
        "memory per job in MB",
    )

    from .figures import write_figures

    written["figures"] += write_figures(frame, usable, experiments, figures_dir, preset)
    log.info(
        "report: %d tables and %d figures written under %s and %s (preset %s, %d of %d runs complete)",
        len(written["tables"]),
        len(written["figures"]),
        tables_dir,
        figures_dir,
        preset,
        done,
        len(status),
    )
    return written
