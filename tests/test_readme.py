"""The README's examples are the ones that run: its Python block executes, its test command is CI's."""

import re
from pathlib import Path

import torch
from original_layout import original_esvae_state_dict

import esvae
from esvae.checkpoints import save_checkpoint

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    (python_block,) = _blocks("python")
    monkeypatch.chdir(tmp_path)
    # The files the example names: an original-layout checkpoint and one of this project's runs.
    torch.save({"state_dict": original_esvae_state_dict(1, 32, (32, 64, 128, 256))}, "esvae_fashion.pth")
    run = Path("runs/fashion-esvae-T16")
    save_checkpoint(run / "checkpoint.pt", esvae.build_model("esvae", "fashion"), epoch=1, step=1)
    namespace = {}
    exec(compile(python_block, "README.md", "exec"), namespace)
    assert namespace["spikes"].shape == (16, 8, 32)
    assert namespace["images"].shape == (8, 1, 32, 32) and namespace["samples"].shape == (16, 1, 32, 32)
    assert set(namespace["terms"]) == {"loss", "mse", "mmd"}
    assert "855,905" in python_block and esvae.count_parameters(namespace["model"]) == 855_905


def test_ci_runs_the_readme_test_command():
    bash_blocks = [b.strip() for b in _blocks("bash")]
    test_command = next(b for b in bash_blocks if "pytest" in b)
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
    # CI may not skip the SLURM test (a user without root gets a skip): required before the tests run
    assert "export ESVAE_REQUIRE_SLURM=1" in ci and ci.index("export ESVAE_REQUIRE_SLURM=1") < ci.index(test_command)
    main_command = next(b for b in bash_blocks if "snakemake" in b)
    # the main job is the pipeline with its default preset (cpu), run by the setup's environment
    assert main_command == "bash scripts/setup.sh && .venv/bin/snakemake --cores all"


def test_readme_is_short_and_every_command_in_it_is_run_by_a_test():
    """At most 150 lines; its code blocks are exactly the ones the tests run: the main job and the test
    command (checked above and run by CI), the smoke preset (conftest.smoke_dir runs it), the quick
    bench (test_fast_path runs it) and the Python block (run above)."""
    from conftest import SMOKE_COMMAND

    assert len(README.splitlines()) <= 150
    blocks = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)
    assert {lang for lang, _ in blocks} <= {"bash", "python", ""}
    bash = [b.strip() for lang, b in blocks if lang == "bash"]
    assert bash[0] == "bash scripts/setup.sh && .venv/bin/snakemake --cores all"
    assert "pytest" in bash[1] and bash[2] == SMOKE_COMMAND
    assert bash[3].startswith(".venv/bin/python -m esvae_bench --timesteps 2 ") and len(bash) == 4
    fast_lane = re.findall(r"`(\.venv/bin/python -m pytest[^`]*)`", README)
    assert fast_lane and all(cmd in bash[1] for cmd in fast_lane)


def test_readme_links_resolve_and_nothing_refers_outside_the_clone():
    """Every relative link of the README and docs/ names a file of the repository, and no tracked text
    file points at a folder a clone does not have (the spec folder beside the development checkout)."""
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).resolve().exists(), f"{doc.name}: broken link {target}"
    outside = "../" + "shared"
    for name in files:
        path = REPO / name
        if path.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".smk", ".rst", ".txt", ".cfg"} or name in {
            "Snakefile",
            ".ci/run",
        }:
            assert outside not in path.read_text(errors="ignore"), f"{name} refers to {outside}"
