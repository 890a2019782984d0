# Measurement, profiling and loading jobs each write Snakemake's benchmark record (wall time, peak RSS/PSS/USS,
# CPU time, I/O of the job's process tree) under logs/benchmark/<rule>/, beside their logs: it is what a job cost
# the machine, for sizing cluster resources, not a latency measurement (those are in the result files; the
# studies folder benchmarks/ and its default output results/benchmarks/ hold the speed studies). Snakemake
# samples the job's processes every 0.5 s for its first 15 s, then every 30 s, from its own process.
#
# One job per cell and replicate. With measure.isolation: shared the job hands its cell to a measurement worker
# (measure/worker_pool.py; one per model, dtype, backend, device and replicate, stopped when the run ends) and
# the priority (measurement_jobs.measurement_order) runs a worker's cells one after another, replicate by
# replicate. Compiled code is cached under results/cache/compile/ (measure/compile_cache.py). Param `measurement`
# names every measure.* value the cell depends on beside its wildcards (measurement_jobs.measurement_settings),
# so changing one re-measures exactly the cells it applies to (Snakemake's params rerun trigger), and nothing
# else; the scalar params only build the command line. Snakemake's other triggers (all on by default) cover the
# inputs: a changed architecture JSON or tokenizer re-measures the cells that read it. `threads:` is no rerun
# trigger, so the runner takes measure.threads from the params: a cell runs with the configured thread count
# whatever --cores is (which only caps what the scheduler reserves for the job).


rule measure_cell:
    input:
        model_config=model_config_file,
        tokenizer=TOKENIZER_FILE,
    output:
        "results/cells/{model}/{dtype}/{backend}/seq{seq}_batch{batch}/r{replicate}.json",
    log:
        "logs/measure/{model}/{dtype}/{backend}/seq{seq}_batch{batch}/r{replicate}.log",
    benchmark:
        "logs/benchmark/measure_cell/{model}/{dtype}/{backend}/seq{seq}_batch{batch}/r{replicate}.tsv"
    params:
        model_kind=model_kind,
        model_location=model_location,
        device=MEASURE["device"],
        attn_implementation=MEASURE["attn_implementation"],
        gen_tokens=MEASURE["gen_tokens"],
        warmup=MEASURE["warmup"],
        reps=MEASURE["reps"],
        seed=MEASURE["seed"],
        threads=MEASURE["threads"],
        cpu_affinity=CPU_AFFINITY,
        isolation=MEASURE["isolation"],
        compile_shapes=compile_shapes,
        compiled_step=compiled_step,
        placement=placement,
        measurement=measurement,
    threads: MEASURE["threads"]
    priority: measurement_priority
    resources:
        **MEASURE_RESOURCES,
    conda:
        "../../envs/measure.yaml"
    shell:
        f"{RUNNER} --replicate {{wildcards.replicate}} --isolation {{params.isolation}}"
        " --out {output} > {log} 2>&1"


# A cell's result: the median of its replicates' medians, with the spread between them (replicates.py).
rule combine_replicates:
    input:
        cell_replicate_files,
    output:
        "results/cells/{model}/{dtype}/{backend}/seq{seq}_batch{batch}.json",
    log:
        "logs/combine/{model}/{dtype}/{backend}/seq{seq}_batch{batch}.log",
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/combine_replicates.py"


# The roofline's two ceilings (copy bandwidth, matmul FLOP/s) of the device, once per dtype; cached.
rule calibrate_device:
    output:
        "results/calibration/{device}_{dtype}.json",
    log:
        "logs/calibrate/{device}_{dtype}.log",
    benchmark:
        "logs/benchmark/calibrate_device/{device}_{dtype}.tsv"
    params:
        threads=MEASURE["threads"],  # the configured count, a rerun trigger (as for measure_cell)
    threads: MEASURE["threads"]
    resources:
        **MEASURE_RESOURCES,
    conda:
        "../../envs/measure.yaml"
    shell:
        "python3 -m latency_sensitivity.measure.calibrate --device {wildcards.device} --dtype {wildcards.dtype}"
        " --threads {params.threads} --out {output} > {log} 2>&1"


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
        trigger=named(**{k: TOKENIZER[k] for k in ("vocab_size", "corpus_chars", "seed")}),
    conda:
        "../../envs/measure.yaml"
    shell:
        "python3 -m latency_sensitivity.measure.tokenization --out {output} --vocab-size {params.vocab_size}"
        " --corpus-chars {params.corpus_chars} --seed {params.seed} > {log} 2>&1"
