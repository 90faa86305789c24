# Compilation: the paper's tables and the figures, from the files under results/ only.


rule report:
    input:
        config="results/config.json",
        trained=run_outputs("train", "metrics.json"),
        evaluated=run_outputs("evaluate", "metrics.json"),
        probed=run_outputs("probe", "probes.json"),
    output:
        tables=table_outputs(),
        metrics_vs_t=report("results/figures/metrics_vs_timesteps.png", caption="../report/metrics_vs_timesteps.rst",
                            category="Ablations"),
        sampler=report("results/figures/sampler_ablation.png", caption="../report/sampler_ablation.rst",
                       category="Ablations"),
        robustness=report("results/figures/robustness.png", caption="../report/robustness.rst", category="Probes"),
        probe=report("results/figures/probe_accuracy.png", caption="../report/probe_accuracy.rst", category="Probes"),
        curves=report("results/figures/training_curves.png", caption="../report/training_curves.rst",
                      category="Training"),
        grids=report(expand("results/figures/grids_{dataset}.png", dataset=MAIN_DATASETS),
                     caption="../report/grids.rst", category="Images"),
        perturbations=report(expand("results/figures/perturbations_{dataset}.png", dataset=MAIN_DATASETS),
                             caption="../report/perturbations.rst", category="Probes"),
    conda:
        CONDA_ENV
    log:
        "logs/report.log",
    threads: RESOURCES["light"]["threads"]
    resources:
        **resources_of("light"),
    shell:
        "python -m esvae report --results results > {log} 2>&1"
