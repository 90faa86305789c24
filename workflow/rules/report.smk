# Compilation: the paper's tables and the figures, from the files under results/<preset>/ only.


rule report:
    input:
        config=f"{OUT}/config.json",
        trained=run_outputs("train", "metrics.json"),
        evaluated=run_outputs("evaluate", "metrics.json"),
        probed=run_outputs("probe", "probes.json"),
    output:
        tables=table_outputs(),
        # first in the Snakemake report: Table I, the claims and the costs, as tables with captions
        table1=report(f"{OUT}/tables/table1.html", caption="../report/table1.rst", category="1. Tables"),
        claims_html=report(f"{OUT}/claims.html", caption="../report/claims.rst", category="1. Tables"),
        costs=report(f"{OUT}/tables/costs.html", caption="../report/costs.rst", category="1. Tables"),
        claims=[f"{OUT}/claims.md", f"{OUT}/claims.csv"],
        metrics_vs_t=report(f"{OUT}/figures/metrics_vs_timesteps.png", caption="../report/metrics_vs_timesteps.rst",
                            category="2. Ablations"),
        sampler=report(f"{OUT}/figures/sampler_ablation.png", caption="../report/sampler_ablation.rst",
                       category="2. Ablations"),
        robustness=report(f"{OUT}/figures/robustness.png", caption="../report/robustness.rst", category="3. Probes"),
        probe=report(f"{OUT}/figures/probe_accuracy.png", caption="../report/probe_accuracy.rst", category="3. Probes"),
        curves=report(f"{OUT}/figures/training_curves.png", caption="../report/training_curves.rst",
                      category="4. Training"),
        grids=report(expand(f"{OUT}/figures/grids_{{dataset}}.png", dataset=MAIN_DATASETS),
                     caption="../report/grids.rst", category="5. Images"),
        perturbations=report(expand(f"{OUT}/figures/perturbations_{{dataset}}.png", dataset=MAIN_DATASETS),
                             caption="../report/perturbations.rst", category="3. Probes"),
    params:
        out=lambda wildcards, output: Path(output.claims[0]).parent,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/report.log",
    threads: RESOURCES["light"]["threads"]
    resources:
        **resources_of("light"),
    shell:
        "python -m esvae_pipeline report --results {params.out} --threads {threads} > {log} 2>&1"
