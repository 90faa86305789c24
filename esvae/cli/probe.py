"""Probe a checkpoint's encoder and decoder: ``python -m esvae probe --checkpoint CKPT --out DIR``."""

from __future__ import annotations

from ._common import add_environment_args, non_negative_int, positive_int, setup_logging


def register(sub) -> None:
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
    pr.set_defaults(run=run)


def run(args) -> int:
    from ..probes import run_probes

    setup_logging()
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
