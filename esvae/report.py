"""``python -m esvae report``: the paper's tables and figures from the files under ``results/``.

Reads only ``results/config.json`` (the resolved preset the workflow ran), the run folders
``results/runs/<dataset>/<model>/<sampler>/T<T>/seed<seed>/{train,evaluate,probe}/`` and the
published Table I shipped with the package (``esvae/resources/paper_table1.csv``). Writes

* ``results/tables/``: ``table1`` (paper rows next to this run's rows), ``ablation_timesteps``,
  ``ablation_sampler``, ``probes``, ``costs`` (parameters, firing rates, synaptic operations) and
  ``runs`` (which planned runs have which results) -- each as ``.csv``, ``.md`` and ``.tex``;
* ``results/figures/``: ``metrics_vs_timesteps.png``, ``sampler_ablation.png``, ``robustness.png``,
  ``probe_accuracy.png``, ``training_curves.png`` and ``grids_<dataset>.png``.

Every table names its conditions (preset, N, split, seeds); numbers are the mean over seeds, with
``± std`` when there are several. A planned run without results is listed as missing in ``runs``
and left out of the other tables, never filled in.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from . import grid
from .errors import EsvaeError

log = logging.getLogger(__name__)
PAPER_TABLE = Path(__file__).resolve().parent / "resources" / "paper_table1.csv"
PAPER_MODEL_NAMES = {"ESVAE": "esvae", "FSVAE": "fsvae", "ANN VAE": "ann_vae", "TAID": "taid"}
MODEL_LABELS = {"esvae": "ESVAE", "fsvae": "FSVAE", "ann_vae": "ANN VAE", "taid": "TAID"}
PAPER_DATASET = {"mnist": "mnist", "mnist5k": "mnist", "fashion": "fashion", "cifar10": "cifar10", "celeba": "celeba"}
TABLES = ("table1", "ablation_timesteps", "ablation_sampler", "probes", "costs", "runs")
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


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}; delete it and re-run the rule that writes it") from None


def _read_history(path: Path) -> List[Dict[str, float]]:
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def load_results(results_dir: Path, points: List[grid.RunPoint]) -> List[RunResults]:
    out = []
    for point in points:
        folder = results_dir / "runs" / point.key
        out.append(RunResults(point, _read_json(folder / "train" / "metrics.json"),
                              _read_json(folder / "evaluate" / "metrics.json"),
                              _read_json(folder / "probe" / "probes.json"),
                              _read_history(folder / "train" / "history.tsv"), folder))
    return out


def _value(block) -> float:
    if isinstance(block, Mapping) and isinstance(block.get("value"), (int, float)):
        return float(block["value"])
    return math.nan


def run_row(r: RunResults) -> Dict[str, object]:
    """One run's numbers, flat (NaN where a metric is missing or was refused)."""
    p = r.point
    row: Dict[str, object] = {"dataset": p.dataset, "model": p.model, "sampler": p.sampler, "T": p.timesteps,
                              "seed": p.seed}
    ev, tr, pr = r.evaluate or {}, r.train or {}, r.probe or {}
    row["mse"] = _value(ev.get("reconstruction_mse")) if ev else _value(tr.get("reconstruction_mse"))
    row["mse_n"] = (ev.get("reconstruction_mse") or tr.get("reconstruction_mse") or {}).get("n")
    row["mse_split"] = (ev.get("reconstruction_mse") or tr.get("reconstruction_mse") or {}).get("split")
    row["train_images"] = tr.get("train_images")
    row["epochs"] = tr.get("epochs")
    for key in ("fid", "kid", "fad", "inception_score"):
        row[key] = _value(ev.get(key))
    row["fid_n"] = (ev.get("fid") or {}).get("name")
    row["fad_n"] = (ev.get("fad") or {}).get("name")
    row["is_refused"] = bool((ev.get("inception_score") or {}).get("refused"))
    params = ev.get("parameters") or {}
    row["parameters"] = params.get("total", tr.get("parameters"))
    costs = ev.get("spike_costs") or {}
    row["firing_rate"] = costs.get("mean_firing_rate", math.nan) if costs.get("mean_firing_rate") is not None else math.nan
    path = costs.get("reconstruction_path") or {}
    row["synops"] = path.get("synops", math.nan)
    row["macs"] = path.get("macs", math.nan)
    timing = ev.get("sampling_time") or {}
    row["sampling_ms"] = timing.get("milliseconds_per_image", math.nan)
    info = pr.get("information_retention") or {}
    row["linear_probe"] = _value(info.get("linear_probe"))
    row["probe_n_train"] = (info.get("linear_probe") or {}).get("n_train")
    row["probe_split"] = (info.get("linear_probe") or {}).get("test_split")
    row["mse_sampled"] = _value(info.get("mse_sampled"))
    row["mse_deterministic"] = _value(info.get("mse_deterministic"))
    for rob in (pr.get("decoder_robustness") or {}).get("rows") or []:   # None for the ANN VAE
        row[f"rob_{rob['condition']}"] = rob["mse"]
    return row


# -- formatting -----------------------------------------------------------------------------------

def _fmt(mean: float, std: float, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "--"
    text = f"{mean:.{digits}f}" if abs(mean) < 1e5 else f"{mean:.3g}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std:.{digits}f}"
    return text


DIGITS = {"mse": 4, "fid": 1, "kid": 3, "fad": 2, "inception_score": 2, "linear_probe": 3, "firing_rate": 3,
          "mse_sampled": 4, "mse_deterministic": 4, "sampling_ms": 2}


def aggregate(df, by: List[str], columns: List[str]):
    """Mean and std (over seeds) of ``columns`` per ``by`` group; adds ``seeds`` (how many)."""
    import pandas as pd

    grouped = df.groupby(by, sort=True, dropna=False)
    mean = grouped[columns].mean()
    std = grouped[columns].std(ddof=1)   # NaN with one seed
    out = mean.copy()
    for c in columns:
        out[f"{c}_std"] = std[c]
    out["seeds"] = grouped["seed"].nunique()
    return out.reset_index() if isinstance(out, pd.DataFrame) else out


def display(df, columns: Mapping[str, str]):
    """Text rendering of an aggregated frame: ``{source column: header}``, values ``mean ± std``."""
    import pandas as pd

    out = pd.DataFrame()
    for col, header in columns.items():
        if f"{col}_std" in df.columns:
            digits = DIGITS.get(col, 3)
            out[header] = [_fmt(m, s, digits) for m, s in zip(df[col], df[f"{col}_std"])]
        else:
            out[header] = df[col].astype(object).where(df[col].notna(), "--").astype(str)
    return out


def write_table(df, text_df, out_dir: Path, name: str, caption: str) -> List[Path]:
    """``name.csv`` (numbers, full precision), ``name.md`` and ``name.tex`` (text, with the caption)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.csv", out_dir / f"{name}.md", out_dir / f"{name}.tex"]
    _atomic_write(paths[0], df.to_csv(index=False))
    md = f"**{name}**: {caption}\n\n" + (text_df.to_markdown(index=False) if len(text_df) else "(no results yet)") + "\n"
    _atomic_write(paths[1], md)
    tex_body = text_df.to_latex(index=False, escape=True) if len(text_df) else "% no results yet\n"
    tex = ("% generated by python -m esvae report\n\\begin{table}[t]\n\\centering\n\\caption{"
           + _latex_escape(caption) + "}\n\\label{tab:" + name + "}\n" + tex_body + "\\end{table}\n")
    _atomic_write(paths[2], tex.replace("±", "$\\pm$"))
    return paths


def _latex_escape(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("$", "\\$"), ("#", "\\#"), ("_", "\\_"),
                 ("{", "\\{"), ("}", "\\}"), ("~", "\\textasciitilde{}"), ("^", "\\textasciicircum{}")):
        text = text.replace(a, b)
    return text


def _atomic_write(path: Path, text: str) -> None:
    from .train import write_text_atomic
    write_text_atomic(path, text)


# -- tables ---------------------------------------------------------------------------------------

def paper_rows(datasets: List[str]):
    import pandas as pd

    paper = pd.read_csv(PAPER_TABLE)
    rows = []
    for dataset in datasets:
        for _, p in paper[paper["dataset"] == PAPER_DATASET[dataset]].iterrows():
            rows.append({"dataset": dataset, "model": p["model"], "source": f"paper ({p['source']})",
                         "mse": p["reconstruction_mse"], "inception_score": p["inception_score"], "fid": p["fid"],
                         "fad": p["fad"], "kid": math.nan,
                         "conditions": "published: full test split, FID over 5,000 samples"
                                       + ("; the paper's dataset is full MNIST" if dataset == "mnist5k" else "")})
    return pd.DataFrame(rows)


def _conditions(group) -> str:
    first = group.iloc[0]
    parts = [f"MSE N={int(first['mse_n'])} ({first['mse_split']})" if first["mse_n"] == first["mse_n"] and first["mse_n"] is not None else "MSE n/a",
             first["fid_n"] or "no FID", first["fad_n"] or "no FAD", f"T={int(first['T'])}",
             f"{int(first['train_images'])} train images x {int(first['epochs'])} epochs"
             if first["train_images"] == first["train_images"] and first["train_images"] is not None else ""]
    if group["is_refused"].any():
        parts.append("IS refused (no Inception classifier weights)")
    return ", ".join(p for p in parts if p)


def table1(frame, preset: str, main_points):
    import pandas as pd

    keys = {p.key for p in main_points}
    ours = frame[frame["key"].isin(keys)]
    datasets = sorted({p.dataset for p in main_points})
    metric_cols = ["mse", "inception_score", "fid", "fad", "kid"]
    rows = []
    for (dataset, model), group in ours.groupby(["dataset", "model"], sort=True):
        seeds = sorted(group["seed"].unique())
        row = {"dataset": dataset, "model": MODEL_LABELS.get(model, model),
               "source": f"this run ({preset}, seeds {','.join(map(str, seeds))})", "conditions": _conditions(group)}
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


def compile_report(results_dir: Path, tables_dir: Optional[Path] = None, figures_dir: Optional[Path] = None,
                   config: Optional[Mapping] = None) -> Dict[str, List[Path]]:
    """Write every table and figure; returns ``{"tables": [...], "figures": [...]}``."""
    import pandas as pd

    results_dir = Path(results_dir)
    tables_dir = Path(tables_dir or results_dir / "tables")
    figures_dir = Path(figures_dir or results_dir / "figures")
    if config is None:
        cfg_file = results_dir / "config.json"
        config = _read_json(cfg_file)
        if config is None:
            raise ReportError(f"{cfg_file} not found: it is written by the workflow (snakemake) before any run; "
                              "run the workflow, or pass the results folder it wrote")
    preset = config["preset"]
    experiments = grid.experiment_points(config)
    points = grid.all_points(config)
    results = load_results(results_dir, points)
    frame = pd.DataFrame([{**run_row(r), "key": r.point.key} for r in results])
    written: Dict[str, List[Path]] = {"tables": [], "figures": []}

    # which planned runs have which results
    status = pd.DataFrame([{"run": r.point.key,
                            "experiments": ",".join(n for n, pts in experiments.items() if r.point in pts),
                            "trained": r.train is not None, "evaluated": r.evaluate is not None,
                            "probed": r.probe is not None} for r in results])
    done = int((status["trained"] & status["evaluated"] & status["probed"]).sum())
    written["tables"] += write_table(status, status.astype(str), tables_dir, "runs",
                                     f"planned runs of preset '{preset}' and their results "
                                     f"({done} of {len(status)} complete)")
    have = frame[frame["mse"].notna()]

    t1 = table1(have, preset, experiments["main"])
    t1_text = display(t1, {"dataset": "dataset", "model": "model", "source": "source", "mse": "MSE",
                           "inception_score": "IS", "fid": "FID", "fad": "FAD", "kid": "KID", "conditions": "conditions"})
    written["tables"] += write_table(t1, t1_text, tables_dir, "table1",
                                     f"Table I layout: published values (paper) next to this run's (preset '{preset}'; "
                                     "N and sample counts per row in 'conditions'; mean ± std over seeds). "
                                     "MSE: images in [-1, 1], mean over test images. Short presets are not converged: "
                                     "compare models within a source, not across sources.")

    def experiment_table(name, by, cols, headers, caption):
        keys = {p.key for p in experiments[name]}
        part = have[have["key"].isin(keys)]
        if len(part):
            agg = aggregate(part, by, cols)
            extra = part.groupby(by, sort=True)[["mse_n", "fid_n"]].first().reset_index()
            agg = agg.merge(extra, on=by)
        else:
            agg = pd.DataFrame(columns=by + cols + [f"{c}_std" for c in cols] + ["seeds", "mse_n", "fid_n"])
        text = display(agg, {**{b: b for b in by}, **headers, "seeds": "seeds"})
        written["tables"] += write_table(agg, text, tables_dir, name, caption)
        return agg

    metric_headers = {"mse": "MSE", "fid": "FID", "kid": "KID", "fad": "FAD", "firing_rate": "firing rate",
                      "linear_probe": "linear probe acc."}
    cols = list(metric_headers)
    fid_names = sorted({n for n in have["fid_n"].dropna().unique()}) if len(have) else []
    fid_note = f"FID/KID/FAD sample counts: {', '.join(fid_names) or 'none computed'}"
    abl_t = experiment_table("ablation_timesteps", ["dataset", "model", "sampler", "T"], cols, metric_headers,
                             f"T ablation (preset '{preset}'): each spiking model with its paper sampler; {fid_note}")
    abl_s = experiment_table("ablation_sampler", ["dataset", "model", "T", "sampler"], cols, metric_headers,
                             f"latent-sampler ablation (preset '{preset}'); {fid_note}")

    rob_cols = [c for c in have.columns if c.startswith("rob_")]
    probe_cols = ["linear_probe", "mse_sampled", "mse_deterministic"] + rob_cols
    probe_part = have[have["linear_probe"].notna()] if "linear_probe" in have else have.iloc[0:0]
    probes = aggregate(probe_part, ["dataset", "model", "sampler", "T"], probe_cols) if len(probe_part) else \
        pd.DataFrame(columns=["dataset", "model", "sampler", "T"] + probe_cols + ["seeds"])
    probe_split = ", ".join(sorted({f"{int(n)} train / {s}" for n, s in zip(probe_part.get("probe_n_train", []),
                                                                           probe_part.get("probe_split", []))
                                    if n == n and n is not None}))
    probe_headers = {"linear_probe": "linear probe acc.", "mse_sampled": "MSE sampled",
                     "mse_deterministic": "MSE deterministic code",
                     **{c: "MSE " + c[4:].replace("noise_", "a=") for c in rob_cols}}
    for c in rob_cols:
        DIGITS.setdefault(c, 4)
    written["tables"] += write_table(probes, display(probes, {"dataset": "dataset", "model": "model", "sampler": "sampler",
                                                               "T": "T", **probe_headers, "seeds": "seeds"}),
                                     tables_dir, "probes",
                                     f"probes (preset '{preset}'; linear probe {probe_split or 'n/a'}): information "
                                     "retention (linear-probe accuracy on the posterior code; MSE with the sampled and "
                                     "the deterministic code) and decoder robustness (MSE when the latent spike train "
                                     "is time-shuffled or each bit flipped with probability a). This project's protocol, "
                                     "not the paper's (experiments.md section 3).")

    cost_cols = ["parameters", "firing_rate", "synops", "macs", "sampling_ms"]
    cost_part = have[have["synops"].notna()] if len(have) else have
    costs = aggregate(cost_part, ["dataset", "model", "sampler", "T"], cost_cols) if len(cost_part) else \
        pd.DataFrame(columns=["dataset", "model", "sampler", "T"] + cost_cols + ["seeds"])
    DIGITS.update({"parameters": 0, "synops": 0, "macs": 0})
    written["tables"] += write_table(costs, display(costs, {"dataset": "dataset", "model": "model", "sampler": "sampler",
                                                            "T": "T", "parameters": "parameters",
                                                            "firing_rate": "mean firing rate",
                                                            "synops": "synaptic ops / image",
                                                            "macs": "MACs / image", "sampling_ms": "sampling ms / image",
                                                            "seeds": "seeds"}),
                                     tables_dir, "costs",
                                     f"model cost (preset '{preset}'): trainable parameters of the modules used; "
                                     "firing rate and synaptic operations (input spikes x fan-out + bias adds) on the "
                                     "reconstruction path, MACs for analog inputs and the readout, per image in eval "
                                     "mode; sampling time per generated image on the machine that ran the evaluation.")

    from .report_figures import write_figures
    written["figures"] += write_figures(frame, results, experiments, abl_t, abl_s, figures_dir, preset)
    log.info("report: %d tables and %d figures written under %s and %s (preset %s, %d of %d runs complete)",
             len(written["tables"]), len(written["figures"]), tables_dir, figures_dir, preset, done, len(status))
    return written
