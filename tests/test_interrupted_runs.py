"""Interrupted and unusual runs: every optimizer on every model family finishes and resumes
bit for bit; diverged runs are probed; probe results record the view they were computed from;
a sweep stops on Ctrl-C and its workers die with it; an interrupted run says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lrscope
from lrscope.errors import RunInterrupted
from lrscope.store.reader import read_probe
from lrscope.train import loop
from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run

LRTRAIN = str(Path(sys.executable).parent / "lrtrain")
LRPROBE = str(Path(sys.executable).parent / "lrprobe")
OPTIMIZERS = ["sgd", "adam", "adamw", "sam", "asam"]
FAMILIES = {  # model -> (dataset, model options, data options): tiny sizes
    "fcn": ("parity", {}, {"n_train": 64, "n_test": 64}),
    "cnn": ("moon_star", {"width": 0.125}, {"n_train": 32, "n_test": 32, "size": 16}),
    "resnet18": ("moon_star", {}, {"n_train": 32, "n_test": 32, "size": 16}),
    "swin_t": ("moon_star", {}, {"n_train": 32, "n_test": 32, "size": 16}),
}


def tiny_cfg(model: str, optimizer: str, **kw) -> RunConfig:
    dataset, mo, do = FAMILIES[model]
    base = dict(dataset=dataset, model=model, model_options=mo, data_options=do, optimizer=optimizer,
                lr=0.01 if optimizer.startswith("adam") else 0.05, momentum=0.9 if optimizer != "sgd" else 0.0,
                max_steps=6, checkpoint_every=2, snapshot_every=2, stop="max-steps", probe_size=16, batch_size=8,
                widths=[16] if model == "fcn" else None, deterministic=True)
    base.update(kw)
    return RunConfig(**base)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    import zarr

    root = zarr.open_group(str(path), mode="r")
    out = {}
    for name, arr in root.members(max_depth=None):
        if isinstance(arr, zarr.Array) and not name.startswith("probes"):
            out[name] = np.asarray(arr[...])
    return out


def interrupt_after_first_checkpoint(monkeypatch):
    """SIGTERM to this process right after the first checkpoint past iteration 0: the loop's own
    handler checkpoints again and stops (what a pre-empted GPU job sees)."""
    real = loop.Trainer.checkpoint
    fired = []

    def checkpoint(self, t):
        real(self, t)
        if t > 0 and not fired:
            fired.append(t)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop.Trainer, "checkpoint", checkpoint)
    return fired


def check_finishes_and_resumes(model, optimizer, tmp_path, monkeypatch):
    cfg = tiny_cfg(model, optimizer)
    ref = train_run(cfg, tmp_path / "ref", progress=False)
    assert ref.status == "completed", ref.message
    fired = interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(RunInterrupted):
        train_run(cfg, tmp_path / "cut", progress=False)
    assert fired
    monkeypatch.undo()
    r = train_run(cfg, tmp_path / "cut", progress=False)
    assert r.status == "completed" and r.resumed_from is not None and r.resumed_from > 0
    a, b = _arrays(ref.path), _arrays(r.path)
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("log/") or k.startswith("checkpoints/") or k.startswith("snapshots/"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_finishes_and_resumes_bitwise_fcn(optimizer, tmp_path, monkeypatch):
    check_finishes_and_resumes("fcn", optimizer, tmp_path, monkeypatch)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "sam"])
def test_optimizers_finish_and_resume_cnn(optimizer, tmp_path, monkeypatch):
    check_finishes_and_resumes("cnn", optimizer, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("model", ["cnn", "resnet18", "swin_t"])
def test_every_optimizer_finishes_and_resumes_every_family(model, optimizer, tmp_path, monkeypatch):
    check_finishes_and_resumes(model, optimizer, tmp_path, monkeypatch)


# ----------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("kw", [dict(lr=1e6), dict(lr=1e30), dict(lr=10.0, optimizer="adam"),
                                dict(lr=1e30, optimizer="adamw")], ids=["sgd-1e6", "sgd-1e30", "adam-10", "adamw-1e30"])
def test_diverged_runs_are_probed(kw, tmp_path):
    from lrscope.probe.runner import compute_paths

    cfg = RunConfig(dataset="parity", model="fcn", widths=[16], max_steps=300, probe_size=40,
                    data_options={"n_train": 400, "n_test": 400}, **kw)
    r = train_run(cfg, tmp_path, progress=False)
    assert r.status in ("diverged", "completed"), r.message
    res = compute_paths([tmp_path], progress=False)
    outcomes = res[str(r.path)]
    assert all(o.startswith(("computed", "not defined")) for o in outcomes.values()), outcomes
    assert outcomes["accuracy"].startswith("computed"), outcomes
    ds = lrscope.open_run(r.path)
    assert np.isfinite(ds.unbiased_accuracy.isel(snapshot=0)), "the first snapshot is a defined result"
    if r.status == "diverged":
        # after the divergence the network's outputs are not numbers: accuracy undefined, not 0
        bad = ~np.isfinite(ds.probe_logits).all(("probe_sample", "class")).values
        assert np.isnan(ds.probe_accuracy.values[bad]).all()


# ----------------------------------------------------------------------------- stale probes
@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_probe_records_the_view_it_was_computed_from(tmp_path):
    """`lrprobe compute` on a run still training: every probe is computed from one view (the
    committed state when it opened the run) and records that view, so the next compute, once the
    run has gone on, recomputes instead of calling the results up to date."""
    from lrscope.probe.runner import compute_run

    argv = [LRTRAIN, "run", "--dataset", "parity", "--model", "fcn",
            "--widths", "256,256", "--lr", "0.01", "--stop", "max-steps", "--max-steps", "20000",
            "--checkpoint-every", "100", "--snapshot-every", "100", "--out", str(tmp_path), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        store = None
        for _ in range(600):
            found = list(tmp_path.glob("*.zarr"))
            if found:
                store = found[0]
                try:
                    if json.loads((store / "zarr.json").read_text())["attributes"]["committed"]["checkpoint"] >= 3:
                        break
                except (ValueError, KeyError):
                    pass
            time.sleep(0.1)
        assert store is not None
        out = compute_run(store, ["accuracy", "loss_ratio", "compressibility", "pruning"])
        assert all(o.startswith("computed") for o in out.values()), out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    now = lrscope.open_run(store).attrs["committed"]
    for name in ("accuracy", "loss_ratio", "compressibility", "pruning"):
        prov = read_probe(store, name).attrs
        seen = json.loads(prov["source_committed"])
        assert seen["iteration"] < now["iteration"], (seen, now)
        assert prov["source_status"] == "running"
    ds = lrscope.open_run(store)
    assert ds.sizes["snapshot"] > len(read_probe(store, "accuracy").snapshot)
    again = compute_run(store, ["accuracy", "loss_ratio", "compressibility", "pruning"])
    assert all(o.startswith("computed") for o in again.values()), again  # not "up to date"
    fresh = {n: read_probe(store, n) for n in ("accuracy", "pruning")}
    compute_run(store, ["accuracy", "pruning"], force=True)
    for n, res in fresh.items():
        forced = read_probe(store, n)
        for v in res.data_vars:
            np.testing.assert_array_equal(res[v].values, forced[v].values, err_msg=v)


def test_view_of_a_live_run_uses_its_own_last_checkpoint(tmp_path):
    """load_model on a Dataset opened earlier uses that view's last checkpoint, not the store's."""
    from lrscope.train.restore import load_model

    cfg = RunConfig(dataset="parity", model="fcn", widths=[8], lr=0.1, stop="max-steps", max_steps=40,
                    checkpoint_every=10, snapshot_every=10, probe_size=20, data_options={"n_train": 200, "n_test": 200})
    r = train_run(cfg, tmp_path, progress=False)
    ds = lrscope.open_run(r.path)
    early = ds.isel(checkpoint=slice(0, 2))
    early.attrs["committed"] = dict(ds.attrs["committed"], checkpoint=2)
    m = load_model(early, checkpoint=-1)
    want = lrscope.load_model(r.path, checkpoint=1)
    for (n, a), (_, b) in zip(m.state_dict().items(), want.state_dict().items()):
        assert (a == b).all(), n


# ----------------------------------------------------------------------------- interrupted runs
def test_interrupted_run_is_listed_as_interrupted_and_resume_says_where(tmp_path, monkeypatch, capsys):
    from lrscope.viz.summary import run_rows

    cfg = tiny_cfg("fcn", "sgd", max_steps=8)
    interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(RunInterrupted):
        train_run(cfg, tmp_path, progress=False)
    monkeypatch.undo()
    (row,) = run_rows([tmp_path])
    assert row["status"] == "interrupted"
    from lrscope.store.lock import RunLock

    store = next(tmp_path.glob("*.zarr"))
    with RunLock(store):  # a live trainer holds the lock: then it is running
        assert run_rows([tmp_path])[0]["status"] == "running"
    r = train_run(cfg, tmp_path, progress=True)
    err = capsys.readouterr().err
    assert f"resuming from iteration {r.resumed_from}" in err
    assert run_rows([tmp_path])[0]["status"] == "completed"


def test_a_store_being_created_says_so(tmp_path):
    from lrscope.errors import StoreError
    from lrscope.store.lock import RunLock

    cfg = tiny_cfg("fcn", "sgd")
    r = train_run(cfg, tmp_path, progress=False)
    import zarr

    g = zarr.open_group(str(r.path), mode="r+")
    g.attrs.update({"committed": {"iteration": 0, "snapshot": 0, "checkpoint": 0}, "status": "running"})
    with RunLock(r.path):
        with pytest.raises(StoreError, match="being created"):
            lrscope.open_run(r.path)


@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_concurrent_forced_computes_on_one_run(tmp_path):
    """Two `lrprobe compute --force` on one run at once: they take turns (a lock on the store's
    folder); neither crashes, and the results are complete."""
    cfg = RunConfig(dataset="parity", model="fcn", widths=[8], lr=0.1, stop="max-steps", max_steps=30,
                    checkpoint_every=10, snapshot_every=10, probe_size=20, data_options={"n_train": 200, "n_test": 200})
    r = train_run(cfg, tmp_path, progress=False)
    argv = [LRPROBE, "compute", str(r.path), "--force", "--quiet",
            "--only", "accuracy,loss_ratio,importance"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    ds = lrscope.open_run(r.path)
    assert "unbiased_accuracy" in ds and "importance_gini" in ds


# ----------------------------------------------------------------------------- sweeps and signals
SPEC = """
[base]
dataset = "parity"
model = "fcn"
widths = [256, 256]
stop = "max-steps"
max_steps = 20000
checkpoint_every = 200
snapshot_every = 1000
[grid]
lr = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
"""


def _sweep(tmp_path, *extra):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    argv = [LRTRAIN, "sweep", str(spec), "--out", str(tmp_path / "runs"),
            "--workers", "2", "--quiet", *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_stores(tmp_path, n, timeout=120):
    for _ in range(int(timeout * 10)):
        stores = [s for s in (tmp_path / "runs").glob("*.zarr") if (s / "zarr.json").exists()]
        ready = [s for s in stores if json.loads((s / "zarr.json").read_text()).get("attributes", {})
                 .get("committed", {}).get("checkpoint", 0) >= 2]
        if len(ready) >= n:
            return stores
        time.sleep(0.1)
    raise AssertionError("the sweep did not start its runs")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    st = Path(f"/proc/{pid}/stat")
    return not (st.exists() and st.read_text().split()[2] == "Z")


@pytest.mark.integration
def test_ctrl_c_stops_a_sweep(tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) behaves like SIGTERM:
    the running runs checkpoint, nothing new starts, one line says what to rerun, exit 130."""
    proc = _sweep(tmp_path)
    _wait_for_stores(tmp_path, 2)
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert time.time() - t0 < 60
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "re-run" in lines[0] and "not started" in lines[0], err
    stores = list((tmp_path / "runs").glob("*.zarr"))
    assert len(stores) == 2, stores  # the queued runs never started
    for s in stores:
        attrs = json.loads((s / "zarr.json").read_text())["attributes"]
        assert attrs["status"] == "running" and "stopped by signal" in attrs["reason"]
    assert not list((tmp_path / "runs").glob(".sweep-stop-*"))


@pytest.mark.integration
def test_sweep_workers_die_with_their_parent(tmp_path):
    proc = _sweep(tmp_path)
    _wait_for_stores(tmp_path, 2)
    kids = _children(proc.pid)
    assert len(kids) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.time() + 60
    while time.time() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.2)
    assert not any(_alive(k) for k in kids), [k for k in kids if _alive(k)]
    # the runs they held checkpointed on the way out (SIGTERM from the kernel) and resume
    for s in (tmp_path / "runs").glob("*.zarr"):
        assert json.loads((s / "zarr.json").read_text())["attributes"]["status"] == "running"


@pytest.mark.integration
def test_rerun_sweep_says_what_it_did(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace("max_steps = 20000", "max_steps = 40").replace("[0.01, 0.02, 0.03, 0.04, 0.05, 0.06]",
                                                                               "[0.01, 0.02]"))
    argv = [LRTRAIN, "sweep", str(spec), "--out", str(tmp_path / "runs"), "--quiet"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and "2 trained" in first.stdout, first.stdout + first.stderr
    second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "2 skipped" in second.stdout, second.stdout + second.stderr


# ----------------------------------------------------------------------------- one recorder
def test_batched_full_disk_fails_like_a_sequential_run(tmp_path, disk_fills_up):
    """The batched stepper records through the same Recorder: a full disk is one line (exit 2)
    and leaves every store of the stack at its last commit, resumable one by one."""
    from click.testing import CliRunner

    from lrscope.cli.train import main as lrtrain

    spec = tmp_path / "spec.toml"
    spec.write_text('[base]\ndataset = "parity"\nmodel = "fcn"\nwidths = [16]\nstop = "max-steps"\n'
                    'max_steps = 120\ncheckpoint_every = 40\nsnapshot_every = 20\nprobe_size = 40\n'
                    'data_options = {n_train = 400, n_test = 200}\n[grid]\nlr = [0.05, 0.1, 0.2]\n')
    free = disk_fills_up(7)  # during a later checkpoint
    argv = ["sweep", str(spec), "--out", str(tmp_path / "runs"), "--batched", "--quiet"]
    res = CliRunner().invoke(lrtrain, argv)
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]  # the summary stays on stdout
    assert len(lines) == 1 and "No space left on device" in lines[0] and "resume" in lines[0], res.output
    assert "Traceback" not in res.output
    stores = sorted((tmp_path / "runs").glob("*.zarr"))
    assert len(stores) == 3
    assert all(lrscope.open_run(s).attrs["status"] == "running" for s in stores)
    free()
    res = CliRunner().invoke(lrtrain, argv)
    assert res.exit_code == 0, res.output
    assert all(lrscope.open_run(s).attrs["status"] == "completed" for s in stores)


def test_batched_runs_record_their_recording_time(tmp_path):
    from lrscope.train.batched import train_batched

    cfgs = [RunConfig(dataset="parity", model="fcn", widths=[16], lr=lr, max_steps=60, stop="max-steps",
                      probe_size=40, data_options={"n_train": 400, "n_test": 200}) for lr in (0.05, 0.1)]
    for r in train_batched(cfgs, tmp_path, progress=False):
        t = lrscope.open_run(r.path).attrs["timings"]
        assert t["batched_runs"] == 2 and t["record_seconds"] > 0 and t["wall_seconds"] > t["record_seconds"]
