# Datasets: decode once into the tensor cache (so parallel jobs only read it) and describe the splits.


rule prepare_data:
    output:
        f"{OUT}/data/{{dataset}}.json",
    params:
        env=ENV_ARGS,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/data/{{dataset}}.log",
    threads: RESOURCES["light"]["threads"]
    resources:
        **resources_of("light"),
    shell:
        "python -m esvae prepare-data --dataset {wildcards.dataset} --out {output} --threads {threads} {params.env} > {log} 2>&1"


rule write_config:
    output:
        f"{OUT}/config.json",
    params:
        # the settings that define the results; where they are tracked is not one of them
        config=lambda wildcards: json.dumps({k: v for k, v in CONFIG.items() if k not in ("tracking_uri", "experiment", "checkpoint")},
                                            sort_keys=True),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/config.log",
    script:
        "../scripts/write_config.py"
