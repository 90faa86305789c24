"""The benchmark pipeline around the ``esvae`` library: the presets and their run grid
(:mod:`.grid`), the MLflow mirror of each run (:mod:`.tracking`), the paper's tables (:mod:`.report`),
figures (:mod:`.figures`) and claims (:mod:`.claims`). The Snakemake workflow (``Snakefile``,
``workflow/``) calls it; ``python -m esvae_pipeline {track,report}`` are its commands. It needs the
``pipeline`` dependency group (Snakemake, MLflow, pandas, seaborn); the library needs none of it.
"""
