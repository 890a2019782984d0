"""GPU slots: concurrent GPU jobs each claim a device of their own (exercised with lock files, no GPU needed)."""

import subprocess
import sys
import time

import pytest

from latency_sensitivity.measure import gpu_slots

HOLDER = """
import sys, time
from latency_sensitivity.measure.gpu_slots import claim_gpu
env = {"CUDA_VISIBLE_DEVICES": sys.argv[2]}
claim = claim_gpu(lock_dir=sys.argv[1], environ=env)
print(claim.device, env["CUDA_VISIBLE_DEVICES"], flush=True)
time.sleep(float(sys.argv[3]))
"""


def hold(lock_dir, visible, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), visible, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    return proc, line


def release_claims(*holders):
    """Stop the holding processes and release the claims this process made."""
    for p in holders:
        p.kill()
        p.wait()
    for fh in gpu_slots._held:
        fh.close()
    gpu_slots._held.clear()


def test_concurrent_claims_get_different_devices_and_wait_when_all_are_taken(tmp_path):
    a, got_a = hold(tmp_path, "0,1", 30)
    b, got_b = hold(tmp_path, "0,1", 30)
    try:
        assert got_a == ["0", "0"] and got_b == ["1", "1"]  # CUDA_VISIBLE_DEVICES narrowed to the claim
        env = {"CUDA_VISIBLE_DEVICES": "0,1"}
        with pytest.raises(TimeoutError, match="no free GPU"):
            gpu_slots.claim_gpu(lock_dir=tmp_path, environ=env, poll_s=0.05, timeout_s=0.3)
        assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
        b.kill()
        b.wait()  # a killed job's device is free again
        claim = gpu_slots.claim_gpu(lock_dir=tmp_path, environ=env, poll_s=0.05, timeout_s=10)
        assert claim.device == "1" and env["CUDA_VISIBLE_DEVICES"] == "1" and claim.devices == ("0", "1")
    finally:
        release_claims(a, b)


def test_a_claim_that_waits_asks_once_and_withdraws_when_the_wait_ends(tmp_path):
    """on_wait (claim_for: ask idle measurement workers to exit) only where every device is taken, once, and
    withdrawn whether the wait ends with the device or with the timeout."""
    calls = []

    def on_wait():
        calls.append("asked")
        return lambda: calls.append("withdrawn")

    env = {"CUDA_VISIBLE_DEVICES": "0"}
    holder, _ = hold(tmp_path, "0", 30)
    try:
        with pytest.raises(TimeoutError):
            gpu_slots.claim_gpu(lock_dir=tmp_path, environ=env, poll_s=0.05, timeout_s=0.3, on_wait=on_wait)
        assert calls == ["asked", "withdrawn"]
        calls.clear()

        def asked_and_holder_exits():
            holder.kill()  # as an idle worker asked to exit does
            return on_wait()

        claim = gpu_slots.claim_gpu(lock_dir=tmp_path, environ=env, poll_s=0.05, timeout_s=10,
                                    on_wait=asked_and_holder_exits)
        assert claim.device == "0" and calls == ["asked", "withdrawn"]
        release_claims()
        calls.clear()
        assert gpu_slots.claim_gpu(lock_dir=tmp_path, environ=env, on_wait=on_wait).device == "0"
        assert calls == []  # free at once: nothing asked
    finally:
        release_claims(holder)


IDLE_WORKER = """
import sys, time
from pathlib import Path
from latency_sensitivity.measure.gpu_slots import claim_gpu
claim_gpu(lock_dir=sys.argv[1], environ={"CUDA_VISIBLE_DEVICES": "0"})
print("holding", flush=True)
end = time.monotonic() + 30  # as an idle worker that nobody asks exits after IDLE_S
while not list(Path(".snakemake/workers").glob("claiming-cuda-*")):  # what Worker.should_exit heeds when idle
    if time.monotonic() > end:
        sys.exit(3)
    time.sleep(0.02)
"""


def test_a_gpu_job_that_waits_asks_the_idle_workers_to_exit(tmp_path, monkeypatch):
    """claim_for on CUDA, every device held by an idle worker of this working directory: the job asks it to exit
    (tests/measure/test_worker.py shows a worker doing so) and claims its device, and the request is withdrawn."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".snakemake" / "workers").mkdir(parents=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv(gpu_slots.LOCK_DIR_ENV, str(tmp_path / "locks"))
    holder = subprocess.Popen([sys.executable, "-c", IDLE_WORKER, str(tmp_path / "locks")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        start = time.monotonic()
        claim = gpu_slots.claim_for("cuda")
        assert claim.device == "0" and claim.waited_s < 10 and time.monotonic() - start < 10
        assert holder.wait(5) == 0  # it left because it was asked
        assert not list((tmp_path / ".snakemake" / "workers").iterdir())
    finally:
        release_claims(holder)


def test_uuids_are_kept_as_written(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "GPU-8a1b,GPU-77ff"}
    assert gpu_slots.visible_devices(env) == ["GPU-8a1b", "GPU-77ff"]
    claim = gpu_slots.claim_gpu(lock_dir=tmp_path, environ=env)
    try:
        assert claim.device == "GPU-8a1b" and env["CUDA_VISIBLE_DEVICES"] == "GPU-8a1b"
        assert [p.name.endswith("-GPU-8a1b.lock") for p in tmp_path.iterdir()] == [True]
    finally:
        release_claims()


def test_nothing_to_claim_or_switched_off(tmp_path):
    assert gpu_slots.claim_gpu(lock_dir=tmp_path, environ={"CUDA_VISIBLE_DEVICES": ""}) is None
    env = {"CUDA_VISIBLE_DEVICES": "0,1", gpu_slots.SWITCH_ENV: "off"}
    assert gpu_slots.claim_gpu(lock_dir=tmp_path, environ=env) is None and env["CUDA_VISIBLE_DEVICES"] == "0,1"
