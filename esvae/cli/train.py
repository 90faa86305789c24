"""Train a model: ``python -m esvae train --model M --dataset D --epochs E --out DIR``."""

from __future__ import annotations

from ..config import LR_RULES, apply_lr_rule
from ..errors import ConfigError
from ._common import (
    add_environment_args,
    add_model_args,
    bounded,
    env_default,
    model_overrides,
    non_negative_int,
    positive_float,
    positive_int,
    setup_logging,
)


def register(sub) -> None:
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
    minutes = bounded(float, 0.0, True, "a number of minutes >= 0")
    t.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=env_default("ESVAE_CHECKPOINT_EVERY", "0"),
        metavar="STEPS",
        help="also save the training state (--out/resume.pt) every STEPS optimiser steps "
        "(default $ESVAE_CHECKPOINT_EVERY or 0 = off; it is always saved at the end of each epoch); "
        "re-running the same command resumes from it",
    )
    t.add_argument(
        "--checkpoint-minutes",
        type=minutes,
        default=env_default("ESVAE_CHECKPOINT_MINUTES", "10"),
        metavar="MIN",
        help="and at least every MIN minutes (default $ESVAE_CHECKPOINT_MINUTES or 10; 0 = off)",
    )
    t.set_defaults(run=run)


def run(args) -> int:
    from ..data import data_source
    from ..models import model_entry
    from ..train import train

    source = data_source(args.dataset)
    paper_train_config = model_entry(args.model).paper_train
    cfg = paper_train_config(source.setting)
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
        apply_lr_rule(cfg, paper_train_config(source.setting), args.lr_rule or "paper_effective")
    setup_logging()
    result = train(
        model_name=args.model,
        dataset=args.dataset,
        out_dir=args.out,
        train_config=cfg,
        model_overrides=model_overrides(args),
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
