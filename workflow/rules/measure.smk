# One job per cell. Every per-cell parameter is a scalar param, so changing one re-measures exactly the
# cells it applies to (Snakemake's params rerun trigger), and nothing else.


rule measure_cell:
    input:
        model_config=model_config_file,
        tokenizer=TOKENIZER_FILE,
    output:
        "results/cells/{model}/{dtype}/{backend}/seq{seq}_batch{batch}.json",
    log:
        "logs/measure/{model}/{dtype}/{backend}/seq{seq}_batch{batch}.log",
    params:
        model_kind=model_kind,
        model_location=model_location,
        device=MEASURE["device"],
        attn_implementation=MEASURE["attn_implementation"],
        gen_tokens=MEASURE["gen_tokens"],
        warmup=MEASURE["warmup"],
        reps=MEASURE["reps"],
        seed=MEASURE["seed"],
    threads: MEASURE["threads"]
    resources:
        **MEASURE_RESOURCES,
    conda:
        "../../envs/measure.yaml"
    shell:
        f"{RUNNER} --out {{output}} > {{log}} 2>&1"


# The roofline's two ceilings (copy bandwidth, matmul FLOP/s) of the device, once per dtype; cached.
rule calibrate_device:
    output:
        "results/calibration/{device}_{dtype}.json",
    log:
        "logs/calibrate/{device}_{dtype}.log",
    threads: MEASURE["threads"]
    resources:
        **MEASURE_RESOURCES,
    conda:
        "../../envs/measure.yaml"
    shell:
        "python3 -m latency_sensitivity.calibrate --device {wildcards.device} --dtype {wildcards.dtype}"
        " --threads {threads} --out {output} > {log} 2>&1"


# The default tokenizer: byte-level BPE trained once on generated text (no download); see tokenization.py.
rule train_tokenizer:
    output:
        "results/tokenizer/tokenizer.json",
    log:
        "logs/tokenizer.log",
    params:
        vocab_size=TOKENIZER["vocab_size"],
        corpus_chars=TOKENIZER["corpus_chars"],
        seed=TOKENIZER["seed"],
    conda:
        "../../envs/measure.yaml"
    shell:
        "python3 -m latency_sensitivity.tokenization --out {output} --vocab-size {params.vocab_size}"
        " --corpus-chars {params.corpus_chars} --seed {params.seed} > {log} 2>&1"
