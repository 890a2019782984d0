# Model loading measured like a deployment's cold start (latency_sensitivity.measure.loading): a model's random
# weights written once as a safetensors checkpoint, then loaded stage by stage onto the device.


rule materialize_checkpoint:
    input:
        model_config=model_config_file,
    output:
        directory("results/checkpoints/{model}/{dtype}"),
    log:
        "logs/loading/materialize_{model}_{dtype}.log",
    benchmark:
        "logs/benchmark/materialize_checkpoint/{model}_{dtype}.tsv"
    params:
        model_kind=model_kind,
        model_location=model_location,
        seed=MEASURE["seed"],
        device=MEASURE["device"],
    resources:
        **MEASURE_RESOURCES,
    conda:
        "../../envs/measure.yaml"
    shell:
        "python3 -m latency_sensitivity.measure.loading materialize --model {wildcards.model} --model-kind {params.model_kind}"
        " --model-location {params.model_location:q} --dtype {wildcards.dtype} --seed {params.seed}"
        " --device {params.device}"
        " --out {output:q} > {log} 2>&1"


rule measure_loading:
    input:
        checkpoint=loading_checkpoint,
    output:
        "results/loading/{model}/{dtype}/{device}.json",
    log:
        "logs/loading/{model}_{dtype}_{device}.log",
    benchmark:
        "logs/benchmark/measure_loading/{model}_{dtype}_{device}.tsv"
    params:
        seq=LOADING["seq"],
    resources:
        **MEASURE_RESOURCES,
    conda:
        "../../envs/measure.yaml"
    shell:
        "python3 -m latency_sensitivity.measure.loading measure --model {wildcards.model} --checkpoint {input.checkpoint:q}"
        " --device {wildcards.device}"
        " --dtype {wildcards.dtype} --seq {params.seq} --out {output} > {log} 2>&1"
