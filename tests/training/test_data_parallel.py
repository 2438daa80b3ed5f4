"""Data-parallel train steps on 4 simulated CPU devices, checked in a subprocess.

The child (data_parallel_child.py) needs 4 devices, which must be configured before JAX
starts, so it runs in its own process and this session keeps its single device.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOLERANCE = 1e-5

# check -> what it asserts (the reference is hand-written unless it says "single"/"emulation")
CHECKS = {
    "single_vs_reference": "jit, one device, global batch",
    "sharded_vs_reference": "jit + NamedSharding over 4 devices, global perturbation",
    "sharded_microbatches_vs_single": "sharded step with 2 micro-batches = single-device one",
    "shard_map_vs_reference": "shard_map + pcast, global perturbation, synced BatchNorm",
    "pmap_vs_reference": "pmap, global perturbation, synced BatchNorm",
    "xsam_sharded_vs_single": "XSAM (search every step), sharded = single device",
    "xsam_shard_map_vs_single": "XSAM, shard_map = single device",
    "xsam_pmap_vs_single": "XSAM, pmap = single device",
    "m_sharpness_shard_map_vs_reference": "per-device perturbations = per-group loop, m = 4",
    "m_sharpness_pmap_vs_reference": "pmap per-device perturbations = per-group loop, m = 4",
    "m_sharpness_shard_map_vs_emulation": "per-device = single-device vmapped groups, m = 4",
    "planned_sharded_vs_reference": "late-phase schedule with perturb=True, sharded",
    "planned_shard_map_vs_reference": "late-phase schedule with perturb=True, shard_map",
    "planned_pmap_vs_reference": "late-phase schedule with perturb=True, pmap",
}


@pytest.fixture(scope="module")
def results() -> dict:
    completed = subprocess.run(
        [sys.executable, os.path.join(HERE, "data_parallel_child.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=HERE,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("check", list(CHECKS))
def test_data_parallel_step(results: dict, check: str):
    outcome = results[check]
    assert "error" not in outcome, f"{CHECKS[check]}:\n{outcome.get('error')}"
    assert outcome["max_diff"] < TOLERANCE, f"{CHECKS[check]}: max |diff| {outcome['max_diff']}"
