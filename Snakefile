# The ESVAE benchmark. Run `snakemake --cores all` (preset `cpu`) or pick a preset:
# `snakemake --cores all --config preset=smoke`. See README.md ("The benchmark pipeline").
include: "workflow/Snakefile"


rule all:
    input:
        all_outputs(),
    default_target: True
