"""The figures of ``python -m esvae_pipeline report`` (seaborn on the frames built in :mod:`esvae_pipeline.report`).

Each figure's title names the preset; a figure with no data to show is still written, with a note
saying which runs it waits for, so the workflow's outputs always exist and never mislead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from esvae.files import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Save through a temporary file and a rename, so a killed job leaves no half-written figure."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return path


def _empty(path: Path, title: str, note: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
    return _save(fig, path)


def _order(models) -> List[str]:
    """Registered models in registry order, the model under study (ESVAE) last; unknown ones after."""
    from esvae.models.registry import MODELS

    order = [m for m in MODELS if m != "esvae"] + ["esvae"]
    present = list(dict.fromkeys(models))
    return [m for m in order if m in present] + sorted(m for m in present if m not in order)


def _labels(part, column) -> str:
    values = sorted({str(v) for v in part.get(column, []) if v is not None and v == v})
    return "; ".join(values) or "n/a"


def _experiment_long(frame, points, metrics, factor):
    """The rows of ``points`` and, in long form (one row per metric value), the ``metrics`` they
    have; ``None`` for the long form when there is nothing to plot."""
    keys = {p.key for p in points}
    part = frame[frame["key"].isin(keys)] if len(frame) else frame
    present = [m for m in metrics if len(part) and part[m].notna().any()]
    if not present:
        return part, None
    long = part.melt(
        id_vars=["dataset", "model", factor, "seed"], value_vars=present, var_name="metric", value_name="value"
    ).dropna(subset=["value"])
    return part, long


def _first_run_per_model(results, points, dataset: str, needed: str):
    """``{model: results}`` of the first run (lowest seed) per model among ``points`` on ``dataset``
    whose folder holds the file ``needed``."""
    chosen: Dict[str, Any] = {}
    for r in sorted(results, key=lambda r: r.point):
        p = r.point
        if p in points and p.dataset == dataset and r.folder is not None and (r.folder / needed).is_file():
            chosen.setdefault(p.model, r)
    return chosen


def write_figures(frame, results, experiments, out_dir: Path, preset: str) -> List[Path]:
    """``frame``: one row per usable run (:func:`esvae_pipeline.report.run_row`); ``results``: their files."""
    import pandas as pd
    import seaborn as sns

    plt = _plt()
    sns.set_theme(style="whitegrid", context="paper")
    out_dir = Path(out_dir)
    written = []
    have = frame

    # metric vs T, one line per model (T ablation points)
    path = out_dir / "metrics_vs_timesteps.png"
    part, long = _experiment_long(have, experiments["ablation_timesteps"], ("mse", "fid", "fad"), "T")
    if long is not None:
        grid = sns.relplot(
            data=long,
            x="T",
            y="value",
            hue="model",
            hue_order=_order(long["model"]),
            col="metric",
            row="dataset",
            kind="line",
            marker="o",
            facet_kws={"sharey": False},
            height=2.6,
            errorbar="sd",
        )
        from matplotlib.ticker import NullLocator

        grid.set(xscale="log", xticks=sorted(long["T"].unique()))
        for ax in grid.axes.flat:
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(t) for t in sorted(long["T"].unique())])
        grid.set_titles("{row_name}: {col_name}")
        grid.figure.suptitle(
            f"metrics vs T (preset {preset}; MSE over {_labels(part, 'mse_split')}; "
            f"FID {_labels(part, 'fid_ref')}; FAD {_labels(part, 'fad_ref')})",
            y=1.04,
            fontsize=8,
        )
        written.append(_save(grid.figure, path))
    else:
        written.append(_empty(path, f"metrics vs T (preset {preset})", "no T-ablation results yet"))

    # sampler ablation bars
    path = out_dir / "sampler_ablation.png"
    part, long = _experiment_long(
        have, experiments["ablation_sampler"], ("mse", "fid", "fad", "linear_probe"), "sampler"
    )
    if long is not None:
        grid = sns.catplot(
            data=long,
            x="sampler",
            y="value",
            col="metric",
            row="dataset",
            kind="bar",
            hue="model",
            sharey=False,
            height=2.6,
            errorbar="sd",
        )
        grid.figure.suptitle(
            f"latent-sampler ablation (preset {preset}; MSE over {_labels(part, 'mse_split')}; "
            f"FID {_labels(part, 'fid_ref')})",
            y=1.04,
            fontsize=8,
        )
        written.append(_save(grid.figure, path))
    else:
        written.append(_empty(path, f"sampler ablation (preset {preset})", "no sampler-ablation results yet"))

    # robustness curves: MSE vs bit-flip probability, shuffled as a marker at a = 0
    path = out_dir / "robustness.png"
    rob = []
    for r in results:
        if r.probe is None:
            continue
        split = (r.probe.get("decoder_robustness") or {}).get("split")
        for row in (r.probe.get("decoder_robustness") or {}).get("rows") or []:  # none for the ANN VAE
            rob.append(
                {
                    "split": split,
                    "dataset": r.point.dataset,
                    "model": r.point.model,
                    "sampler": r.point.sampler,
                    "T": r.point.timesteps,
                    "seed": r.point.seed,
                    "condition": row["condition"],
                    "a": row["a"],
                    "mse": row["mse"],
                    "label": f"{r.point.model} ({r.point.sampler}, T={r.point.timesteps})",
                }
            )
    rob = pd.DataFrame(rob)
    main_keys = {(p.dataset, p.model, p.sampler, p.timesteps) for p in experiments["main"]}
    if len(rob):
        rob = rob[
            [(d, m, s, t) in main_keys for d, m, s, t in zip(rob["dataset"], rob["model"], rob["sampler"], rob["T"])]
        ]
    if len(rob):
        datasets = sorted(rob["dataset"].unique())
        fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.4), squeeze=False)
        palette = dict(zip(_order(rob["model"]), sns.color_palette(n_colors=len(set(rob["model"])))))
        for ax, dataset in zip(axes[0], datasets):
            part = rob[rob["dataset"] == dataset]
            curve = part[part["condition"] != "shuffled"].copy()
            sns.lineplot(
                data=curve,
                x="a",
                y="mse",
                hue="model",
                hue_order=_order(curve["model"]),
                palette=palette,
                marker="o",
                ax=ax,
                errorbar="sd",
            )
            shuffled = part[part["condition"] == "shuffled"].groupby("model")["mse"].mean()
            for model, mse in shuffled.items():
                ax.scatter([0.0], [mse], marker="x", s=60, color=palette[model], zorder=5)
            ax.set_title(f"{dataset}: x = time-shuffled")
            ax.set_xlabel("bit-flip probability a")
            ax.set_ylabel("reconstruction MSE")
        fig.suptitle(f"decoder robustness (preset {preset}; MSE over {_labels(rob, 'split')})", y=1.02)
        written.append(_save(fig, path))
    else:
        written.append(_empty(path, f"decoder robustness (preset {preset})", "no probe results yet"))

    # probe accuracy bars
    path = out_dir / "probe_accuracy.png"
    part = have[have["linear_probe"].notna()] if len(have) else have
    part = part[[k in {p.key for p in experiments["main"]} for k in part["key"]]] if len(part) else part
    if len(part):
        grid = sns.catplot(
            data=part,
            x="model",
            y="linear_probe",
            order=_order(part["model"]),
            col="dataset",
            kind="bar",
            height=3,
            errorbar="sd",
        )
        grid.set_axis_labels("model", "linear-probe test accuracy")
        grid.figure.suptitle(
            f"information retention of the posterior code (preset {preset}; test split {_labels(part, 'probe_split')})",
            y=1.04,
        )
        written.append(_save(grid.figure, path))
    else:
        written.append(_empty(path, f"probe accuracy (preset {preset})", "no probe results yet"))

    # training curves (test MSE per epoch) of the main-table runs
    path = out_dir / "training_curves.png"
    rows = []
    main = set(experiments["main"])
    for r in results:
        if r.point in main:
            for h in r.history:
                if "test_mse" in h:
                    rows.append(
                        {
                            "dataset": r.point.dataset,
                            "model": r.point.model,
                            "seed": r.point.seed,
                            "epoch": int(h["epoch"]),
                            "test MSE": h["test_mse"],
                            "split": (r.train.get("reconstruction_mse") or {}).get("split"),
                        }
                    )
    curves = pd.DataFrame(rows)
    if len(curves):
        grid = sns.relplot(
            data=curves,
            x="epoch",
            y="test MSE",
            hue="model",
            hue_order=_order(curves["model"]),
            col="dataset",
            kind="line",
            marker="o",
            height=3,
            errorbar="sd",
        )
        grid.figure.suptitle(
            f"test reconstruction MSE during training (preset {preset}; over "
            f"{_labels(curves, 'split')}; epoch 0 = untrained)",
            y=1.04,
        )
        written.append(_save(grid.figure, path))
    else:
        written.append(_empty(path, f"training curves (preset {preset})", "no training histories yet"))

    # image grids per dataset: each main model's reconstructions and samples (first seed)
    for dataset in sorted({p.dataset for p in experiments["main"]}):
        path = out_dir / f"grids_{dataset}.png"
        chosen = _first_run_per_model(results, main, dataset, "train/samples.png")
        if not chosen:
            written.append(_empty(path, f"{dataset} (preset {preset})", "no trained models yet"))
            continue
        models = _order(chosen)
        fig, axes = plt.subplots(len(models), 2, figsize=(7, 3.6 * len(models)), squeeze=False)
        for row, model in zip(axes, models):
            r = chosen[model]
            for ax, name, what in zip(
                row, ("reconstructions.png", "samples.png"), ("reconstructions (rows: input, output)", "samples")
            ):
                ax.imshow(plt.imread(r.folder / "train" / name))
                ax.set_title(f"{model} T={r.point.timesteps}: {what}", fontsize=8)
                ax.axis("off")
        fig.suptitle(f"{dataset}, preset {preset}, seed {min(r.point.seed for r in chosen.values())}")
        written.append(_save(fig, path))

    # the perturbation grids of the probes (rows: input, reconstruction, shuffled, each noise level)
    for dataset in sorted({p.dataset for p in experiments["main"]}):
        path = out_dir / f"perturbations_{dataset}.png"
        chosen = _first_run_per_model(results, main, dataset, "probe/perturbations.png")
        if not chosen:
            written.append(
                _empty(path, f"{dataset} perturbations (preset {preset})", "no probe results of a spiking model yet")
            )
            continue
        models = _order(chosen)
        fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 6), squeeze=False)
        for ax, model in zip(axes[0], models):
            r = chosen[model]
            ax.imshow(plt.imread(r.folder / "probe" / "perturbations.png"))
            ax.set_title(f"{model} T={r.point.timesteps}", fontsize=9)
            ax.axis("off")
        fig.suptitle(
            f"{dataset}, preset {preset}: rows input, reconstruction, time-shuffled, bit flips a = 0.05 ... 0.30"
        )
        written.append(_save(fig, path))
    return written
