# Profiler artifacts, on demand only: `snakemake profile_all` (the tools of profile.tools) or one of
# profile_nsys / profile_ncu / profile_torch. Each wraps the measure rule's runner command line (RUNNER,
# common.smk) with the profile section's warmup and reps; the runner marks model build, warmup, the
# measured region and each rep's prefill and decode with NVTX ranges (domain latency_sensitivity).
# `all` builds none of this unless profile.in_report is set.

rule nsys_profile:
    input:
        model_config=model_config_file,
        tokenizer=TOKENIZER_FILE,
        binary=profiler_binary("nsys"),
    output:
        report=f"results/profiles/nsys/{PROFILE_CELL}.nsys-rep",
        cell=f"results/profiles/nsys/{PROFILE_CELL}.cell.json",
    log:
        f"logs/profile/nsys/{PROFILE_CELL}.log",
    benchmark:
        f"logs/benchmark/nsys_profile/{PROFILE_CELL}.tsv"
    params:
        **PROFILE_RUNNER_PARAMS,
        nsys=PROFILE["nsys"]["path"],
        prefix=_report_prefix,
    threads: MEASURE["threads"]
    resources:
        **MEASURE_RESOURCES,
    conda:
        "../../envs/measure.yaml"
    shell:
        # CUDA + NVTX only (no CPU sampling or context switches); kernels inside CUDA graphs traced per
        # node; only the runner's `measured` NVTX range is captured.
        "NSYS_NVTX_PROFILER_REGISTER_ONLY=0 {params.nsys:q} profile --trace cuda,nvtx --sample none"
        " --cpuctxsw none --cuda-graph-trace node --capture-range nvtx"
        " --nvtx-capture measured@latency_sensitivity --capture-range-end stop --force-overwrite true"
        " --output {params.prefix:q}"
        f" {RUNNER} --profile-mode external --out {{output.cell}} > {{log}} 2>&1;"
        " test -f {output.report:q} || {{ echo 'nsys wrote no report (see {log}; the runner result"
        " {output.cell} says whether the cell failed)' >&2; exit 1; }}"


rule nsys_stats:
    input:
        report=f"results/profiles/nsys/{PROFILE_CELL}.nsys-rep",
        binary=profiler_binary("nsys"),
    output:
        **{name: f"results/profiles/nsys/{PROFILE_CELL}/{name}.csv" for name in NSYS_REPORTS},
    log:
        f"logs/profile/nsys_stats/{PROFILE_CELL}.log",
    params:
        nsys=PROFILE["nsys"]["path"],
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/nsys_stats.py"


rule ncu_profile:
    input:
        model_config=model_config_file,
        tokenizer=TOKENIZER_FILE,
        binary=profiler_binary("ncu"),
    output:
        report=f"results/profiles/ncu/{PROFILE_CELL}/{{phase}}.ncu-rep",
        cell=f"results/profiles/ncu/{PROFILE_CELL}/{{phase}}.cell.json",
    log:
        f"logs/profile/ncu/{PROFILE_CELL}/{{phase}}.log",
    benchmark:
        f"logs/benchmark/ncu_profile/{PROFILE_CELL}/{{phase}}.tsv"
    params:
        **PROFILE_RUNNER_PARAMS,
        ncu=PROFILE["ncu"]["path"],
        prefix=_report_prefix,
        kernel_name=f"regex:{PROFILE['ncu']['kernel_regex']}",
        launch_skip=PROFILE["ncu"]["launch_skip"],
        launch_count=PROFILE["ncu"]["launch_count"],
        sections=" ".join([f"--section {s}" for s in PROFILE["ncu"]["sections"]]
                          + ([f"--set {PROFILE['ncu']['set']}"] if PROFILE["ncu"]["set"] else [])),
    threads: MEASURE["threads"]
    resources:
        **MEASURE_RESOURCES,
    conda:
        "../../envs/measure.yaml"
    shell:
        # Never lock or change clocks (--clock-control none); only kernels of the phase's NVTX range in the
        # first measured rep (rep0.prefill or rep0.decode).
        "{params.ncu:q} --clock-control none --nvtx --nvtx-include 'latency_sensitivity@rep0.{wildcards.phase}/'"
        " --kernel-name {params.kernel_name:q} --launch-skip {params.launch_skip}"
        " --launch-count {params.launch_count} {params.sections} --force-overwrite --export {params.prefix:q}"
        f" {RUNNER} --profile-mode external --out {{output.cell}} > {{log}} 2>&1;"
        " test -f {output.report:q} || {{ echo 'ncu profiled no kernel: no launch in the {wildcards.phase} range"
        " matched profile.ncu.kernel_regex (see {log})' >&2; exit 1; }}"


rule ncu_export:
    input:
        report=f"results/profiles/ncu/{PROFILE_CELL}/{{phase}}.ncu-rep",
        binary=profiler_binary("ncu"),
    output:
        f"results/profiles/ncu/{PROFILE_CELL}/{{phase}}.details.csv",
    log:
        f"logs/profile/ncu_export/{PROFILE_CELL}/{{phase}}.log",
    params:
        ncu=PROFILE["ncu"]["path"],
    conda:
        "../../envs/measure.yaml"
    shell:
        "{params.ncu:q} --import {input.report:q} --csv --page details --print-units base"
        " > {output:q}.tmp 2> {log} && mv {output:q}.tmp {output:q}"


rule torch_profile:
    input:
        model_config=model_config_file,
        tokenizer=TOKENIZER_FILE,
    output:
        trace=f"results/profiles/torch/{PROFILE_CELL}/trace.json.gz",
        ops=f"results/profiles/torch/{PROFILE_CELL}/ops.csv",
        cell=f"results/profiles/torch/{PROFILE_CELL}/cell.json",
    log:
        f"logs/profile/torch/{PROFILE_CELL}.log",
    benchmark:
        f"logs/benchmark/torch_profile/{PROFILE_CELL}.tsv"
    params:
        **PROFILE_RUNNER_PARAMS,
        folder=lambda wildcards, output: str(Path(output.trace).parent),
    threads: MEASURE["threads"]
    resources:
        **MEASURE_RESOURCES,
    conda:
        "../../envs/measure.yaml"
    shell:
        f"{RUNNER} --profile-mode torch --torch-profile-dir {{params.folder:q}} --out {{output.cell}} > {{log}} 2>&1"


rule summarize_nsys:
    input:
        nvtx_kern_sum=f"results/profiles/nsys/{PROFILE_CELL}/nvtx_kern_sum.csv",
        nvtx_gpu_proj_sum=f"results/profiles/nsys/{PROFILE_CELL}/nvtx_gpu_proj_sum.csv",
        cell=f"results/profiles/nsys/{PROFILE_CELL}.cell.json",
    output:
        f"results/profiles/summary/nsys/{PROFILE_CELL}.json",
    log:
        f"logs/profile/summary/nsys/{PROFILE_CELL}.log",
    params:
        tool="nsys",
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/summarize_profile.py"


rule summarize_ncu:
    input:
        details=expand(f"results/profiles/ncu/{PROFILE_CELL}/{{phase}}.details.csv", phase=PROFILE["ncu"]["phases"],
                       allow_missing=True),
        cell=f"results/profiles/ncu/{PROFILE_CELL}/{PROFILE['ncu']['phases'][0]}.cell.json",
    output:
        f"results/profiles/summary/ncu/{PROFILE_CELL}.json",
    log:
        f"logs/profile/summary/ncu/{PROFILE_CELL}.log",
    params:
        tool="ncu",
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/summarize_profile.py"


rule summarize_torch:
    input:
        trace=f"results/profiles/torch/{PROFILE_CELL}/trace.json.gz",
        cell=f"results/profiles/torch/{PROFILE_CELL}/cell.json",
    output:
        f"results/profiles/summary/torch/{PROFILE_CELL}.json",
    log:
        f"logs/profile/summary/torch/{PROFILE_CELL}.log",
    params:
        tool="torch",
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/summarize_profile.py"


rule profile_report:
    input:
        profile_targets(PROFILE["tools"]),
    output:
        report="results/profiles/report.md",
        classes="results/profiles/kernel_classes.csv",
        phases="results/profiles/phases.csv",
        kernels="results/profiles/ncu_kernels.csv",
    log:
        "logs/profile/report.log",
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/profile_report.py"


rule profile_all:
    input:
        profile_targets(PROFILE["tools"]),
        "results/profiles/report.md",


rule profile_nsys:
    input:
        profile_targets(["nsys"]),


rule profile_ncu:
    input:
        profile_targets(["ncu"]),


rule profile_torch:
    input:
        profile_targets(["torch"]),
