"""benchmarks/gpu_check.py on this machine: one table, every row either a result, a skip with its
reason (the CUDA rows without CUDA) or the error's one line, written where --out says (never over
benchmarks/GPU.md)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parents[1] / "benchmarks"


def digest(p: Path):
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


@pytest.mark.integration  # the whole benchmark script in a subprocess (~40 s): after the fast suite
def test_gpu_check_runs_and_reports_every_row(tmp_path):
    before = digest(BENCH / "GPU.md")
    out = tmp_path / "GPU.md"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--steps", "2", "--k", "2", "--out", str(out),
                        "--models", "fcn,nosuch_model", "--model-device", "cpu"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert digest(BENCH / "GPU.md") == before  # the committed table is not touched
    text = out.read_text()
    assert text in p.stdout  # printed and written: the same table
    rows = [ln.split(" | ") for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| check")]
    by = {(r[0][2:], r[1], r[2].split(",")[0]): r[-1].rstrip(" |") for r in rows}
    checks = {k[0] for k in by}
    assert checks == {"model", "overhead", "batched", "probe", "placement"}
    # the model rows ran on the CPU as asked; an unknown model is its row's error, not the table's end
    assert by[("model", "cpu", "fcn fp32 channels-last n/a (vector inputs)")] == "ok"
    assert by[("model", "cpu", "fcn bf16 channels-last n/a (vector inputs)")] == "ok"
    assert by[("model", "cpu", "nosuch_model fp32 channels-last n/a (vector inputs)")].startswith(
        "error: KeyError: \"model 'nosuch_model' is not in the registry")
    for (check, device, _), status in by.items():
        if device == "cuda" and not torch.cuda.is_available():
            assert status.startswith("skipped: no CUDA device"), (check, status)
        elif check != "model":
            assert status == "ok", (check, device, status)
    placement = [r for r in rows if r[0] == "| placement" and r[1] == "cpu"]
    assert len(placement) == 3
    for r in placement[1:]:  # host and mmap stores equal the device store, bit for bit
        assert "store bitwise equal to the device run's" in r[3], r
