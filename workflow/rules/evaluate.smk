# Evaluation: MSE, FID, KID, IS (or its refusal), FID-clean, FAD (ours; the authors' published one
# when evaluate.fad_published_dir names their files), parameters, spikes and energy, sampling time.


rule evaluate:
    input:
        checkpoint=f"{RUN}/train/checkpoint.pt",
        fad=f"{OUT}/fad/{{dataset}}/fad_autoencoder.pt",
        published=lambda wildcards: grid.published_fad_inputs(CONFIG, wildcards.dataset),
    output:
        metrics=f"{RUN}/evaluate/metrics.json",
    params:
        env=ENV_ARGS,
        out=lambda wildcards, output: Path(output.metrics).parent,
        track=tracked("evaluate", "metrics"),
        ev=CONFIG["evaluate"],
        metrics=",".join(CONFIG["evaluate"]["metrics"]),
        batch=f"--batch-size {CONFIG['evaluate']['batch_size']}" if CONFIG["evaluate"].get("batch_size") else "",
        published=grid.published_fad_args(CONFIG),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/runs/{KEY}/evaluate.log",
    benchmark:
        f"{OUT}/benchmarks/runs/{KEY}/evaluate.tsv"
    threads: RESOURCES["evaluate"]["threads"]
    resources:
        **resources_of("evaluate"),
    shell:
        "python -m esvae evaluate --checkpoint {input.checkpoint} --out {params.out} --metrics {params.metrics}"
        " --num-samples {params.ev[num_samples]} --test-subset {params.ev[test_subset]}"
        " --reference-subset {params.ev[reference_subset]} {params.batch} --fad-autoencoder {input.fad} {params.published}"
        " --threads {threads} {params.env} > {log} 2>&1"
        " && {params.track} >> {log} 2>&1"
