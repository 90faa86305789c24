"""The library stands apart from the pipeline: installing it needs none of the workflow's packages
(Snakemake, MLflow, seaborn, pandas are an optional group the set-up installs), and importing it,
building a model and running a training step and a sample load none of them."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
PIPELINE_ONLY = ("snakemake", "mlflow", "seaborn", "pandas")


def _names(requirements):
    return [re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower() for r in requirements]


def test_core_dependencies_hold_no_pipeline_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core, pipeline = _names(project["dependencies"]), _names(project["optional-dependencies"]["pipeline"])
    assert "torch" in core and "numba" in core
    for package in PIPELINE_ONLY:
        assert not any(n == package or n.startswith(package + "-") for n in core), package
        assert package in pipeline, package
    assert (
        'pip install -q --disable-pip-version-check -e ".[pipeline,test]"'
        in (REPO / "scripts" / "setup.sh").read_text()
    )


LIBRARY_USE = """
import json, sys, torch
import esvae, esvae.train, esvae.evaluate, esvae.probes, esvae.data, esvae.checkpoints, esvae.losses
import esvae.metrics, esvae.metrics.fidelity, esvae.metrics.fad, esvae.samplers, esvae.spiking
for name in ("esvae", "fsvae"):
    model = esvae.build_model(name, "fashion", timesteps=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    esvae.train.train_step(model, optimizer, torch.rand(2, 1, 32, 32) * 2 - 1, torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        model.sample(2, torch.Generator().manual_seed(0))
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))))
"""


@pytest.mark.workflow  # end to end (a whole command, real data or subprocesses): the long lane
def test_library_use_loads_no_pipeline_package():
    out = subprocess.run(
        [sys.executable, "-c", LIBRARY_USE, *PIPELINE_ONLY], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
