"""The Snakemake workflow without running it: presets, schema, grid, lint and dry runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from esvae.data import SOURCES
from esvae.errors import ConfigError
from esvae.models import MODELS
from esvae.samplers import SAMPLERS
from esvae_pipeline import grid

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
    # cpu: 4 models x 3 seeds on fashion + 4 x 1 on mnist5k; esvae, fsvae x 5 T (seed 0); 3 samplers
    # (seed 0). Shared: the 2 T4 seed-0 main points of the T ablation and esvae/poisson/T4/seed0 of the
    # sampler ablation -> 16 + 10 + 3 - 3 = 26.
    assert counts["cpu"] == ({"main": 16, "ablation_timesteps": 10, "ablation_sampler": 3}, 26)
    # paper: 3 seeds; 4x4 main, 4 datasets x 2 models x 6 T, 4 datasets x 3 samplers
    # -> 48 + 144 + 36 - (24 T16 points shared with main) - (12 poisson points shared with main) = 192.
    assert counts["paper"] == ({"main": 48, "ablation_timesteps": 144, "ablation_sampler": 36}, 192)


def test_each_point_knows_every_table_it_is_in():
    """The MLflow table tags come from point_tables: a point of the main table at the T ablation's T is
    in both, and every point is in exactly the experiments whose grid holds it."""
    config = grid.resolve_config({"preset": "cpu"})
    experiments = grid.experiment_points(config)
    tables = grid.point_tables(experiments)
    assert set(tables) == set(grid.all_points(config))
    for point, names in tables.items():
        assert names == [name for name in grid.EXPERIMENTS if point in experiments[name]], point
    assert any(names[:2] == ["main", "ablation_timesteps"] for names in tables.values())


def test_default_preset_is_cpu_and_user_keys_override_it():
    config = grid.resolve_config({"preset": "cpu"})
    assert yaml.safe_load((REPO / "config" / "config.yaml").read_text())["preset"] == "cpu"
    merged = grid.resolve_config({"preset": "smoke", "seeds": [0, 1], "train": {"epochs": {"default": 2}}})
    assert merged["seeds"] == [0, 1] and merged["train"]["epochs"] == {"default": 2}
    assert merged["train"]["train_subset"] == 256  # untouched nested keys stay the preset's
    assert config["main"]["timesteps"] == 4 and config["train"]["lr_rule"] == "paper_effective"


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
    assert "--sampler" not in ann and "--timesteps" not in ann  # the ANN VAE has neither setting
    assert grid.default_sampler("fsvae") == "fsvae_autoregressive" and grid.default_sampler("ann_vae") == "gaussian"
    paper = grid.resolve_config({"preset": "paper"})
    assert grid.epochs_for(paper, "esvae") == 300 and grid.epochs_for(paper, "fsvae") == 150
    assert "--batch-size" not in grid.train_args(paper, p)  # each model's paper batch size


@pytest.mark.parametrize(
    "override, key",
    [
        ({"main": {"models": ["esvae", "vae"]}}, "main.models[1]"),
        ({"main": {"timesteps": 0}}, "main.timesteps"),
        ({"ablation_timesteps": {"timesteps": [4, -1]}}, "ablation_timesteps.timesteps[1]"),
        ({"evaluate": {"metrics": ["fid", "ssim"]}}, "evaluate.metrics[1]"),
        ({"seeds": []}, "seeds"),
        ({"trian": {}}, "'trian' was unexpected"),
        (
            {"ablation_sampler": {"models": ["esvae"], "samplers": ["fsvae_autoregressive"]}},
            "ablation_sampler.samplers[0]",
        ),
        ({"preset": "fast"}, "'preset': unknown preset 'fast'"),
        (
            {"ablation_timesteps": {"models": ["esvae", "ann_vae"]}},
            "ablation_timesteps.models[1]: 'ann_vae' has no time axis",
        ),
    ],
)
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
    outputs = set(re.findall(r"results/\w+/runs/[^\s,]+", out))
    return {k: int(v) for k, v in table.items()}, outputs


def test_paper_dry_run_plans_every_model_dataset_and_both_ablations(tmp_path):
    code, out = snakemake("-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--config", "preset=paper")
    assert code == 0, out[-3000:]
    jobs, outputs = _planned(out)
    assert jobs["train"] == jobs["evaluate"] == jobs["probe"] == 192
    assert jobs["fad_autoencoder"] == jobs["prepare_data"] == 4 and jobs["report"] == 1
    for dataset in ("mnist", "fashion", "cifar10", "celeba"):
        for model, sampler in (
            ("esvae", "poisson"),
            ("fsvae", "fsvae_autoregressive"),
            ("taid", "fsvae_autoregressive"),
        ):
            for seed in (0, 1, 2):
                assert f"results/paper/runs/{dataset}/{model}/{sampler}/T16/seed{seed}/train/checkpoint.pt" in outputs
        assert f"results/paper/runs/{dataset}/ann_vae/gaussian/T1/seed2/train/checkpoint.pt" in outputs
        for t in (1, 2, 4, 8, 32):  # the T ablation
            assert f"results/paper/runs/{dataset}/esvae/poisson/T{t}/seed0/train/checkpoint.pt" in outputs
            assert f"results/paper/runs/{dataset}/fsvae/fsvae_autoregressive/T{t}/seed1/train/checkpoint.pt" in outputs
        for sampler in ("bernoulli_st", "rate_repeat"):  # the sampler ablation
            assert f"results/paper/runs/{dataset}/esvae/{sampler}/T16/seed2/evaluate/metrics.json" in outputs


def test_cpu_dry_run_is_the_default_and_plans_the_whole_grid_at_its_settings(tmp_path):
    code, out = snakemake("-n", "-p", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path))
    assert code == 0, out[-3000:]
    jobs, outputs = _planned(out)
    # main: 4 models x 3 seeds on Fashion-MNIST + 4 x 1 on MNIST-5k; T ablation ESVAE/FSVAE at
    # T = 1, 2, 8, 16 (T = 4 is the main table's seed-0 point); sampler ablation bernoulli_st, rate_repeat
    assert jobs["train"] == jobs["evaluate"] == jobs["probe"] == 12 + 4 + 8 + 2
    assert jobs["prepare_data"] == jobs["fad_autoencoder"] == 2 and jobs["report"] == 1
    runs = {o.split("/train/")[0].split("/runs/")[1] for o in outputs if o.endswith("/train/checkpoint.pt")}
    assert all(o.startswith("results/cpu/") for o in outputs)
    for seed in (0, 1, 2):
        assert {
            f"fashion/esvae/poisson/T4/seed{seed}",
            f"fashion/fsvae/fsvae_autoregressive/T4/seed{seed}",
            f"fashion/taid/fsvae_autoregressive/T4/seed{seed}",
            f"fashion/ann_vae/gaussian/T1/seed{seed}",
        } <= runs
    assert not any(r.startswith("mnist5k/") and not r.endswith("seed0") for r in runs)  # MNIST-5k: 1 seed
    assert {
        f"fashion/{m}/{s}/T{t}/seed0"
        for m, s in (("esvae", "poisson"), ("fsvae", "fsvae_autoregressive"))
        for t in (1, 2, 8, 16)
    } <= runs
    assert not any("/T32/" in r for r in runs)
    # every training job: batch 16 at the paper's effective LR, 1 thread, its model's epochs
    commands = [
        line.split("Shell command: ", 1)[1]
        for line in out.splitlines()
        if line.startswith("Shell command: python -m esvae train ")
    ]
    assert len(commands) == jobs["train"]
    for cmd in commands:
        assert "--batch-size 16" in cmd and "--lr-rule paper_effective" in cmd and "--threads 1" in cmd, cmd
        assert "--train-subset 10000" in cmd and "--device auto" in cmd, cmd
    epochs = {
        (re.search(r"--model (\w+)", c).group(1), re.search(r"--dataset (\w+)", c).group(1)): int(
            re.search(r"--epochs (\d+)", c).group(1)
        )
        for c in commands
    }
    assert epochs == {
        ("esvae", "fashion"): 3,
        ("ann_vae", "fashion"): 3,
        ("fsvae", "fashion"): 4,
        ("taid", "fashion"): 4,
        ("esvae", "mnist5k"): 6,
        ("ann_vae", "mnist5k"): 6,
        ("fsvae", "mnist5k"): 10,
        ("taid", "mnist5k"): 8,
    }
    assert sum("--num-samples 250" in line for line in out.splitlines()) == jobs["evaluate"]


def test_each_preset_writes_under_its_own_folder(tmp_path):
    code, out = snakemake("-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--config", "preset=smoke")
    assert code == 0, out[-3000:]
    paths = set(re.findall(r"(?:results|logs)/[\w.-]+", out))
    assert paths and all(p in ("results/smoke", "logs/smoke") for p in paths), sorted(paths)


def test_slurm_profile_maps_resources_and_asks_for_gpus(tmp_path):
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    for rule in ("train", "evaluate"):
        assert profile["set-resources"][rule]["gpu"] == 1
    code, out = snakemake(
        "-n",
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--config",
        "preset=smoke",
    )
    assert code == 0, out[-3000:]
    train_jobs = [block for block in out.split("rule ")[1:] if block.startswith("train:")]
    assert train_jobs and all("gpu=1" in block for block in train_jobs)
    assert all("mem_mb=2000" in block and "runtime=20" in block for block in train_jobs)


def test_every_rule_has_a_log_and_the_heavy_ones_a_benchmark_and_resources():
    text = {p.name: p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk")}
    rules = {}
    for body in text.values():
        for match in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", body, flags=re.M | re.S):
            rules[match.group(1)] = match.group(2)
    assert {"prepare_data", "write_config", "fad_autoencoder", "train", "evaluate", "probe", "report"} <= set(rules)
    for name, body in rules.items():
        assert "    log:" in body, name
    for name in ("train", "evaluate", "probe", "fad_autoencoder"):
        assert "    benchmark:" in rules[name] and "    resources:" in rules[name] and "    threads:" in rules[name]
    for name in ("train", "evaluate", "probe"):  # the one path grammar in results/, logs/, benchmarks/
        assert "{RUN}/" in rules[name] and "{LOGS}/runs/{KEY}/" in rules[name]
        assert "{OUT}/benchmarks/runs/{KEY}/" in rules[name]
