"""The two LR rules at another batch size than the paper's (docs/method.md's worked numbers)."""

import pytest

from esvae.cli import main
from esvae.config import apply_lr_rule, paper_train_config
from esvae.errors import ConfigError
from esvae.models import model_entry


def resolved(model, batch, rule):
    paper = model_entry(model).paper_train("fashion")
    cfg = model_entry(model).paper_train("fashion")
    cfg.batch_size = batch
    return apply_lr_rule(cfg, paper, rule)


def test_original_linear_scaling_gives_the_original_codes_lr_at_batch_64():
    assert resolved("esvae", 64, "original_linear_scaling").lr == pytest.approx(0.003 * 64 / 250)  # 0.000768
    assert resolved("fsvae", 64, "original_linear_scaling").lr == pytest.approx(0.001 * 64 / 250)  # 0.000256
    assert resolved("taid", 16, "original_linear_scaling").lr == pytest.approx(0.001 * 16 / 250)


def test_paper_effective_keeps_the_papers_lr_and_says_so():
    cfg = resolved("esvae", 16, "paper_effective")
    assert cfg.lr == pytest.approx(0.003072) and cfg.lr_rule == "paper_effective"
    assert "kept at batch 16 (paper batch 256" in cfg.lr_derivation
    # at the paper's batch both rules are the paper's LR
    assert resolved("fsvae", 250, "original_linear_scaling").lr == pytest.approx(0.001)
    with pytest.raises(ConfigError, match="unknown lr_rule 'linear'"):
        apply_lr_rule(paper_train_config("fashion"), paper_train_config("fashion"), "linear")


def test_cli_refuses_lr_together_with_a_rule(tmp_path, capsys):
    code = main(
        [
            "train",
            "--model",
            "esvae",
            "--dataset",
            "fashion",
            "--epochs",
            "0",
            "--out",
            str(tmp_path / "r"),
            "--lr",
            "0.001",
            "--lr-rule",
            "paper_effective",
        ]
    )
    assert code != 0 and "give --lr or --lr-rule, not both" in capsys.readouterr().err
