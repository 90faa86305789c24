# The FAD autoencoder: trained once per dataset, reused by every model's evaluation.


rule fad_autoencoder:
    input:
        f"{OUT}/data/{{dataset}}.json",
    output:
        model=f"{OUT}/fad/{{dataset}}/fad_autoencoder.pt",
        metrics=f"{OUT}/fad/{{dataset}}/metrics.json",
        # its training run; declared so that a rerun starts it afresh (an interrupted one resumes from resume.pt)
        run=f"{OUT}/fad/{{dataset}}/autoencoder/checkpoint.pt",
    params:
        env=ENV_ARGS,
        out=lambda wildcards, output: Path(output.model).parent,
        fad=CONFIG["fad"],
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/fad/{{dataset}}.log",
    benchmark:
        f"{OUT}/benchmarks/fad/{{dataset}}.tsv"
    threads: RESOURCES["fad"]["threads"]
    resources:
        **resources_of("fad"),
    shell:
        "python -m esvae train-fad-autoencoder --dataset {wildcards.dataset} --out {params.out}"
        " --epochs {params.fad[epochs]} --train-subset {params.fad[train_subset]}"
        " --test-subset {params.fad[test_subset]} --threads {threads} {params.env} > {log} 2>&1"
