# Training: one job per run point (dataset, model, sampler, T, seed), then its MLflow mirror.


rule train:
    input:
        f"{OUT}/data/{{dataset}}.json",
    output:
        checkpoint=f"{RUN}/train/checkpoint.pt",
        metrics=f"{RUN}/train/metrics.json",
        history=f"{RUN}/train/history.tsv",
        config=f"{RUN}/train/config.json",
        reconstructions=f"{RUN}/train/reconstructions.png",
        samples=f"{RUN}/train/samples.png",
    params:
        env=ENV_ARGS,
        args=lambda wildcards: " ".join(grid.train_args(CONFIG, point_of(wildcards))),
        out=lambda wildcards, output: Path(output.checkpoint).parent,
        track=tracked("train", "checkpoint"),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/runs/{KEY}/train.log",
    benchmark:
        f"{OUT}/benchmarks/runs/{KEY}/train.tsv"
    # longest first: the expensive points (high T, FSVAE/TAID) start early instead of being the tail
    priority: lambda wildcards: grid.train_cost(CONFIG, point_of(wildcards))
    threads: RESOURCES["train"]["threads"]
    resources:
        **resources_of("train"),
    shell:
        "python -m esvae train {params.args} --out {params.out} --threads {threads} {params.env} > {log} 2>&1"
        " && {params.track} >> {log} 2>&1"
