"""The Snakemake workflow without running it: presets, schema, grid, lint and dry runs."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from esvae import grid
from esvae.data import SOURCES
from esvae.errors import ConfigError
from esvae.models import MODELS
from esvae.samplers import SAMPLERS

REPO = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def snakemake(*args, cwd=REPO, timeout=300):
    """``snakemake`` of this interpreter's environment; returns (exit code, stdout + stderr)."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), *args]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout + out.stderr


def test_schema_enums_are_the_package_registries():
    d = SCHEMA["$defs"]
    assert set(d["model"]["enum"]) == set(MODELS)
    assert set(d["dataset"]["enum"]) == set(SOURCES)
    assert set(d["sampler"]["enum"]) == set(SAMPLERS) | {grid.ANN_LATENT}


def test_every_preset_validates_and_expands_to_the_counted_grid():
    counts = {}
    for name in ("smoke", "cpu", "paper"):
        config = grid.resolve_config({"preset": name})
        counts[name] = {k: len(v) for k, v in grid.experiment_points(config).items()}, len(grid.all_points(config))
    # smoke: 4 main models; T in {2, 4} for esvae; esvae x {poisson, bernoulli_st}. Shared: esvae/poisson/T4.
    assert counts["smoke"] == ({"main": 4, "ablation_timesteps": 2, "ablation_sampler": 2}, 6)
    # cpu: 4 models x 2 datasets; esvae, fsvae x 6 T on fashion; 3 samplers. Shared: the 2 T16 main
    # points of the T ablation and esvae/poisson/T16 of the sampler ablation -> 8 + 12 + 3 - 3 = 20.
    assert counts["cpu"] == ({"main": 8, "ablation_timesteps": 12, "ablation_sampler": 3}, 20)
    # paper: 3 seeds; 4x4 main, 4 datasets x 2 models x 6 T, 4 datasets x 3 samplers
    # -> 48 + 144 + 36 - (24 T16 points shared with main) - (12 poisson points shared with main) = 192.
    assert counts["paper"] == ({"main": 48, "ablation_timesteps": 144, "ablation_sampler": 36}, 192)


def test_default_preset_is_cpu_and_user_keys_override_it():
    config = grid.resolve_config({"preset": "cpu"})
    assert yaml.safe_load((REPO / "config" / "config.yaml").read_text())["preset"] == "cpu"
    merged = grid.resolve_config({"preset": "smoke", "seeds": [0, 1], "train": {"epochs": {"default": 2}}})
    assert merged["seeds"] == [0, 1] and merged["train"]["epochs"] == {"default": 2}
    assert merged["train"]["train_subset"] == 256          # untouched nested keys stay the preset's
    assert config["main"]["timesteps"] == 16


def test_run_points_paths_and_cli_arguments():
    p = grid.RunPoint("fashion", "esvae", "bernoulli_st", 8, 2)
    assert p.key == "fashion/esvae/bernoulli_st/T8/seed2"
    assert grid.RunPoint.from_key(p.key) == p
    with pytest.raises(ConfigError, match="not a run folder key"):
        grid.RunPoint.from_key("fashion/esvae/T8")
    config = grid.resolve_config({"preset": "smoke"})
    args = grid.train_args(config, p)
    assert args[args.index("--sampler") + 1] == "bernoulli_st" and args[args.index("--timesteps") + 1] == "8"
    ann = grid.train_args(config, grid.RunPoint("fashion", "ann_vae", "gaussian", 1, 0))
    assert "--sampler" not in ann and "--timesteps" not in ann     # the ANN VAE has neither setting
    assert grid.default_sampler("fsvae") == "fsvae_autoregressive" and grid.default_sampler("ann_vae") == "gaussian"
    paper = grid.resolve_config({"preset": "paper"})
    assert grid.epochs_for(paper, "esvae") == 300 and grid.epochs_for(paper, "fsvae") == 150
    assert "--batch-size" not in grid.train_args(paper, p)          # each model's paper batch size


@pytest.mark.parametrize("override, key", [
    ({"main": {"models": ["esvae", "vae"]}}, "main.models[1]"),
    ({"main": {"timesteps": 0}}, "main.timesteps"),
    ({"ablation_timesteps": {"timesteps": [4, -1]}}, "ablation_timesteps.timesteps[1]"),
    ({"evaluate": {"metrics": ["fid", "ssim"]}}, "evaluate.metrics[1]"),
    ({"seeds": []}, "seeds"),
    ({"trian": {}}, "'trian' was unexpected"),
    ({"ablation_sampler": {"models": ["esvae"], "samplers": ["fsvae_autoregressive"]}}, "ablation_sampler.samplers[0]"),
    ({"preset": "fast"}, "'preset': unknown preset 'fast'"),
    ({"ablation_timesteps": {"models": ["esvae", "ann_vae"]}}, "ablation_timesteps.models[1]: 'ann_vae' has no time axis"),
])
def test_bad_config_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        grid.resolve_config({"preset": "smoke", **override})
    assert key in str(err.value)


def test_snakemake_rejects_a_bad_config_naming_the_key_before_planning(tmp_path):
    code, out = snakemake("-n", "--config", "preset=smoke", "main={datasets: [fashion], models: [vae], timesteps: 4}")
    assert code != 0 and "config key main.models[0]: 'vae' is not one of" in out
    assert "Building DAG" not in out
    mine = tmp_path / "mine.yaml"
    mine.write_text("preset: smoke\nmain:\n  timesteps: 0\n")
    code, out = snakemake("-n", "--configfile", str(mine))
    assert code != 0 and "config key main.timesteps: 0 is less than the minimum of 1" in out


def test_lint_is_clean():
    code, out = snakemake("--lint")
    assert code == 0, out


def _planned(out):
    """Rule name -> count from a dry run's job table, and every output path it names."""
    table = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1].split("Reasons:")[0], flags=re.M))
    outputs = set(re.findall(r"results/runs/[^\s,]+", out))
    return {k: int(v) for k, v in table.items()}, outputs


def test_paper_dry_run_plans_every_model_dataset_and_both_ablations(tmp_path):
    code, out = snakemake("-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--config", "preset=paper")
    assert code == 0, out[-3000:]
    jobs, outputs = _planned(out)
    assert jobs["train"] == jobs["evaluate"] == jobs["probe"] == 192
    assert jobs["fad_autoencoder"] == jobs["prepare_data"] == 4 and jobs["report"] == 1
    for dataset in ("mnist", "fashion", "cifar10", "celeba"):
        for model, sampler in (("esvae", "poisson"), ("fsvae", "fsvae_autoregressive"),
                               ("taid", "fsvae_autoregressive")):
            for seed in (0, 1, 2):
                assert f"results/runs/{dataset}/{model}/{sampler}/T16/seed{seed}/train/checkpoint.pt" in outputs
        assert f"results/runs/{dataset}/ann_vae/gaussian/T1/seed2/train/checkpoint.pt" in outputs
        for t in (1, 2, 4, 8, 32):   # the T ablation
            assert f"results/runs/{dataset}/esvae/poisson/T{t}/seed0/train/checkpoint.pt" in outputs
            assert f"results/runs/{dataset}/fsvae/fsvae_autoregressive/T{t}/seed1/train/checkpoint.pt" in outputs
        for sampler in ("bernoulli_st", "rate_repeat"):   # the sampler ablation
            assert f"results/runs/{dataset}/esvae/{sampler}/T16/seed2/evaluate/metrics.json" in outputs


def test_cpu_dry_run_is_the_default_and_plans_twenty_runs(tmp_path):
    code, out = snakemake("-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path))
    assert code == 0, out[-3000:]
    jobs, outputs = _planned(out)
    assert jobs["train"] == 20 and jobs["prepare_data"] == 2      # fashion and mnist5k
    assert "results/runs/mnist5k/taid/fsvae_autoregressive/T16/seed0/train/checkpoint.pt" in outputs
    assert "results/runs/fashion/fsvae/fsvae_autoregressive/T32/seed0/probe/probes.json" in outputs


def test_slurm_profile_maps_resources_and_asks_for_gpus(tmp_path):
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    for rule in ("train", "evaluate"):
        assert profile["set-resources"][rule]["gpu"] == 1
    code, out = snakemake("-n", "--profile", str(REPO / "profiles" / "slurm"), "-s", str(REPO / "Snakefile"),
                          "--directory", str(tmp_path), "--config", "preset=smoke")
    assert code == 0, out[-3000:]
    train_jobs = [block for block in out.split("rule ")[1:] if block.startswith("train:")]
    assert train_jobs and all("gpu=1" in block for block in train_jobs)
    assert all("mem_mb=2000" in block and "runtime=20" in block for block in train_jobs)


def test_every_rule_has_a_log_and_the_heavy_ones_a_benchmark_and_resources():
    text = {p.name: p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk")}
    rules = {}
    for name, body in text.items():
        for match in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", body, flags=re.M | re.S):
            rules[match.group(1)] = match.group(2)
    assert {"prepare_data", "write_config", "fad_autoencoder", "train", "evaluate", "probe", "report"} <= set(rules)
    for name, body in rules.items():
        assert "    log:" in body, name
    for name in ("train", "evaluate", "probe", "fad_autoencoder"):
        assert "    benchmark:" in rules[name] and "    resources:" in rules[name] and "    threads:" in rules[name]
    for name in ("train", "evaluate", "probe"):     # the one path grammar in results/, logs/, benchmarks/
        assert "{RUN}/" in rules[name] and "logs/runs/{KEY}/" in rules[name] and "benchmarks/runs/{KEY}/" in rules[name]
