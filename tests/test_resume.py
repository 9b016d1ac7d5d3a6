"""A run killed with SIGKILL mid-training resumes from its last checkpoint, and ends with the
same store as an uninterrupted run (CPU, one thread: bitwise identical)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import lrscope

ARGS = ["run", "--lr", "0.1", "--widths", "64,64", "--batch-size", "50", "--probe-size", "100",
        "--data-options", json.dumps({"n_train": 2000, "n_test": 500, "core_bits": 3, "spurious_bits": 1,
                                      "noise_bits": 10}),
        "--snapshot-every", "50", "--checkpoint-every", "100", "--max-steps", "1500", "--stop", "max-steps",
        "--quiet"]


def lrtrain(out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    code = "import torch; torch.set_num_threads(1); from lrscope.cli.train import main; main()"
    return [sys.executable, "-c", code, *ARGS, "--out", str(out), *extra], env


def committed(path):
    try:
        return zarr.open_group(str(path), mode="r").attrs["committed"]
    except Exception:
        return None


def kill_after(out, n_checkpoints, timeout=120):
    cmd, env = lrtrain(out)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    store = None
    while time.time() - t0 < timeout:
        stores = list(out.glob("*.zarr"))
        if stores:
            store = stores[0]
            c = committed(store)
            if c and c["checkpoint"] >= n_checkpoints:
                break
        if p.poll() is not None:
            pytest.fail("training finished before it could be killed")
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return store


def final_state(store):
    ds = lrscope.open_run(store, probes=False)
    root = zarr.open_group(str(store), mode="r")
    params = {n: np.asarray(a[-1]) for n, a in root["checkpoints/params"].arrays()}
    return ds, params


def assert_same_store(a, b):
    da, pa = final_state(a)
    db, pb = final_state(b)
    assert da.attrs["status"] == db.attrs["status"] == "completed"
    for v in ("loss", "accuracy", "bc_loss_sum", "grad_norm", "param_norm", "batch_index", "batch_logits",
              "test_logits", "train_logits", "probe_features"):
        np.testing.assert_array_equal(da[v].values, db[v].values, err_msg=v)
    np.testing.assert_array_equal(da.snapshot_iteration.values, db.snapshot_iteration.values)
    np.testing.assert_array_equal(da.checkpoint_iteration.values, db.checkpoint_iteration.values)
    for n in pa:
        np.testing.assert_array_equal(pa[n], pb[n], err_msg=n)


@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    ref_out = tmp_path / "ref"
    cmd, env = lrtrain(ref_out)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    ref = next(ref_out.glob("*.zarr"))

    out = tmp_path / "killed"
    store = kill_after(out, 4)
    c = committed(store)
    assert c is not None and c["iteration"] < 1500
    # a reader sees a consistent prefix of the interrupted run
    ds = lrscope.open_run(store)
    assert ds.attrs["status"] == "running"
    assert ds.sizes["snapshot"] == len(ds.snapshot_iteration)
    cmd, env = lrtrain(out)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "completed" in r.stdout
    assert_same_store(ref, store)


@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    out = tmp_path / "term"
    cmd, env = lrtrain(out)
    cmd = [a if a != "1500" else "100000" for a in cmd]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (list(out.glob("*.zarr")) and committed(next(out.glob("*.zarr"))) and
               committed(next(out.glob("*.zarr")))["iteration"] > 0):
        assert time.time() - t0 < 60
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "checkpointed" in err and "Error" not in err and "Traceback" not in err
    ds = lrscope.open_run(next(out.glob("*.zarr")))
    assert ds.attrs["status"] == "running" and "signal" in ds.attrs["reason"]
    # the checkpoint is at the iteration where it stopped: nothing is lost
    assert ds.checkpoint_iteration.values[-1] == ds.sizes["iteration"]
