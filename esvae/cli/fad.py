"""Train a dataset's FAD autoencoder: ``python -m esvae train-fad-autoencoder --dataset D --out DIR``."""

from __future__ import annotations

from pathlib import Path

from ._common import add_environment_args, data_names, non_negative_int, positive_float, positive_int, setup_logging


def register(sub) -> None:
    f = sub.add_parser(
        "train-fad-autoencoder", help="train a dataset's FAD autoencoder and store its test-split code statistics"
    )
    f.add_argument("--dataset", required=True, choices=data_names())
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
    f.set_defaults(run=run)


def run(args) -> int:
    from ..metrics.fad import FILE, train_fad_autoencoder

    setup_logging()
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
