"""results/config.json: the resolved preset the workflow runs, with the code version (Snakemake script)."""

import json
import os
import platform
from pathlib import Path

from esvae.checkpoints import git_commit
from esvae.results import write_result
from esvae.runtime import cpu_name

config = json.loads(snakemake.params.config)  # noqa: F821 - injected by Snakemake


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""


config["_provenance"] = {
    "git_commit": git_commit(),
    "platform": platform.platform(),
    "cpu": f"{os.cpu_count()}-core {cpu_name()}",
    "gpu": gpu_name(),
    "python": platform.python_version(),
}
write_result(Path(snakemake.output[0]), "preset", config)  # noqa: F821
with open(snakemake.log[0], "w") as log:  # noqa: F821
    log.write(f"wrote {snakemake.output[0]} for preset {config['preset']}\n")  # noqa: F821
