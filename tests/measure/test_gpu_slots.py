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
        for p in (a, b):
            p.kill()
            p.wait()
        for fh in gpu_slots._held:
            fh.close()
        gpu_slots._held.clear()


def test_uuids_are_kept_as_written(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "GPU-8a1b,GPU-77ff"}
    assert gpu_slots.visible_devices(env) == ["GPU-8a1b", "GPU-77ff"]
    claim = gpu_slots.claim_gpu(lock_dir=tmp_path, environ=env)
    try:
        assert claim.device == "GPU-8a1b" and env["CUDA_VISIBLE_DEVICES"] == "GPU-8a1b"
        assert [p.name.endswith("-GPU-8a1b.lock") for p in tmp_path.iterdir()] == [True]
    finally:
        for fh in gpu_slots._held:
            fh.close()
        gpu_slots._held.clear()


def test_nothing_to_claim_or_switched_off(tmp_path):
    assert gpu_slots.claim_gpu(lock_dir=tmp_path, environ={"CUDA_VISIBLE_DEVICES": ""}) is None
    env = {"CUDA_VISIBLE_DEVICES": "0,1", gpu_slots.SWITCH_ENV: "off"}
    assert gpu_slots.claim_gpu(lock_dir=tmp_path, environ=env) is None and env["CUDA_VISIBLE_DEVICES"] == "0,1"
