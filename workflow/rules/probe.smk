# Probes: encoder information retention and decoder robustness (docs/metrics.md section 3).


rule probe:
    input:
        checkpoint=f"{RUN}/train/checkpoint.pt",
        # probes log into the run's MLflow entry after evaluation, so the two never race on it
        evaluated=f"{RUN}/evaluate/metrics.json",
    output:
        # robustness.tsv/png and perturbations.png are written next to it for spiking models only
        # (the ANN VAE has no spike train to perturb), so they are not declared outputs
        probes=f"{RUN}/probe/probes.json",
    params:
        env=ENV_ARGS,
        out=lambda wildcards, output: Path(output.probes).parent,
        track=tracked("probe", "probes"),
        pr=CONFIG["probe"],
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/runs/{KEY}/probe.log",
    benchmark:
        f"{OUT}/benchmarks/runs/{KEY}/probe.tsv"
    threads: RESOURCES["probe"]["threads"]
    resources:
        **resources_of("probe"),
    shell:
        "python -m esvae probe --checkpoint {input.checkpoint} --out {params.out}"
        " --train-subset {params.pr[train_subset]} --test-subset {params.pr[test_subset]}"
        " --threads {threads} {params.env} > {log} 2>&1"
        " && {params.track} >> {log} 2>&1"
