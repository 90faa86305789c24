"""results/config.json: the resolved preset the workflow runs, with the code version (Snakemake script)."""
import json
import platform
from pathlib import Path

from esvae.train import write_json
from esvae.tracking import git_commit

config = json.loads(snakemake.params.config)  # noqa: F821 - injected by Snakemake
config["_provenance"] = {"git_commit": git_commit(), "machine": platform.platform(), "processor": platform.processor(),
                         "python": platform.python_version()}
write_json(Path(snakemake.output[0]), config)  # noqa: F821
with open(snakemake.log[0], "w") as log:  # noqa: F821
    log.write(f"wrote {snakemake.output[0]} for preset {config['preset']}\n")  # noqa: F821
