"""Crashes at any moment, readers during writes, concurrent sweep workers, a full disk, damaged
and untrusted stores: lrscope loses nothing, tells the truth, and executes nothing from a store."""

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner

import lrscope
from lrscope.cli.probe import main as lrprobe
from lrscope.cli.train import main as lrtrain
from lrscope.errors import StoreError
from lrscope.train.loop import train_run

from conftest import tiny_config
from test_resume import assert_same_store, committed

ARGS = ["run", "--lr", "0.1", "--momentum", "0.9", "--widths", "32,32", "--batch-size", "50", "--probe-size", "100",
        "--data-options", json.dumps({"n_train": 1000, "n_test": 300, "core_bits": 3, "spurious_bits": 1,
                                      "noise_bits": 8}),
        "--snapshot-every", "40", "--checkpoint-every", "60", "--max-steps", "400", "--stop", "max-steps",
        "--quiet"]
CODE = "import torch; torch.set_num_threads(1); from lrscope.cli.train import main; main()"


def env(**extra):
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    e.pop("LRSCOPE_CRASH_AT", None)
    e.update(extra)
    return e


def train_cmd(out):
    return [sys.executable, "-c", CODE, *ARGS, "--out", str(out)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    subprocess.run(train_cmd(out), env=env(), check=True, capture_output=True)
    return next(out.glob("*.zarr"))


# ----------------------------------------------------------------------------- killed mid-write
@pytest.mark.parametrize("point", ["flush:2", "snapshot:3", "checkpoint:2", "optimizer:3", "commit:4", "shrink:1",
                                   pytest.param("snapshot:6", marks=pytest.mark.slow),
                                   pytest.param("checkpoint:5", marks=pytest.mark.slow),
                                   pytest.param("flush:7", marks=pytest.mark.slow),
                                   pytest.param("commit:7", marks=pytest.mark.slow)])
@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_killed_mid_write_resumes_to_identical_store(tmp_path, reference, point):
    out = tmp_path / "run"
    r = subprocess.run(train_cmd(out), env=env(LRSCOPE_CRASH_AT=point), capture_output=True)
    assert r.returncode == -9, (point, r.returncode, r.stderr[-500:])
    store = next(out.glob("*.zarr"))
    ds = lrscope.open_run(store)  # the interrupted store reads as a consistent prefix
    assert ds.attrs["status"] == "running"
    r = subprocess.run(train_cmd(out), env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_same_store(reference, store)


def _random_kill_trials(tmp_path, reference, trials, seed):
    rng = random.Random(seed)
    for trial in range(trials):
        out = tmp_path / f"t{trial}"
        p = subprocess.Popen(train_cmd(out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 5.0))  # interpreter start-up is ~2 s of this
        p.kill()
        p.wait()
        for _ in range(3):  # killed again on the way, sometimes
            r = subprocess.Popen(train_cmd(out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if rng.random() < 0.3:
                time.sleep(rng.uniform(2.0, 3.5))
                r.kill()
            r.wait()
        r = subprocess.run(train_cmd(out), env=env(), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert_same_store(reference, next(out.glob("*.zarr")))


def _write_kill(out, n):
    script = os.path.join(os.path.dirname(__file__), "kill_at_write.py")
    return subprocess.run([sys.executable, script, *ARGS, "--out", str(out)], capture_output=True, text=True,
                          env=env(LRSCOPE_KILL_AT_WRITE=str(n)))


@pytest.mark.slow
@pytest.mark.long  # ~8 min
@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_killed_between_any_two_writes_of_creation_and_finish(tmp_path, reference):
    """Killed before each of the first writes (the store's creation) and every other one of the
    last 31 (the final flush, snapshot, checkpoint, cut to length and commit): the run resumes to the
    uninterrupted store. Found this way: zarr's attrs.update() wrote a commit key by key (a kill
    in between left a store that no reader accepted, or a finished run that resumed at its end
    and recorded its last snapshot twice), and a finished store cut to length after its commit."""
    r = _write_kill(tmp_path / "count", 0)
    assert r.returncode == 0, r.stderr[-1000:]
    n = int(r.stderr.rsplit("zarr writes: ", 1)[1].split()[0])
    for k in sorted({*range(1, 5), *range(n - 30, n + 1, 2), n - 1}):  # ~12 s each: 21 of them
        out = tmp_path / f"k{k}"
        r = _write_kill(out, k)
        assert r.returncode == -9, (k, r.returncode, r.stderr[-500:])
        r = subprocess.run(train_cmd(out), env=env(), capture_output=True, text=True)
        assert r.returncode == 0, (k, r.stderr[-1000:])
        try:
            assert_same_store(reference, next(out.glob("*.zarr")))
        except AssertionError as e:
            raise AssertionError(f"killed at write {k} of {n}: {e}") from None


@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_killed_at_random_moments(tmp_path, reference):
    _random_kill_trials(tmp_path, reference, trials=1, seed=0)


@pytest.mark.slow
@pytest.mark.long  # ~8 min
def test_killed_at_random_moments_many(tmp_path, reference):
    _random_kill_trials(tmp_path, reference, trials=12, seed=1)


# ----------------------------------------------------------------------------- readers during writes
@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_readers_see_consistent_prefixes_while_training(tmp_path):
    out = tmp_path / "live"
    args = [a if a != "400" else "3000" for a in train_cmd(out)]
    p = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reads = 0
    try:
        while p.poll() is None:
            stores = list(out.glob("*.zarr"))
            if not stores or committed(stores[0]) is None or committed(stores[0])["snapshot"] == 0:
                time.sleep(0.05)
                continue
            ds = lrscope.open_run(stores[0], probes=False)
            n_it, n_snap = ds.sizes["iteration"], ds.sizes["snapshot"]
            assert (ds.batch_index.values >= 0).all()  # no unwritten (-1 filled) log rows
            assert np.isfinite(ds.loss.values).all()
            it = ds.snapshot_iteration.values
            assert len(it) == n_snap and np.all(np.diff(it) > 0) and it[-1] <= max(n_it, 1)
            last = ds.test_logits.isel(snapshot=-1).values
            assert np.abs(last).sum() > 0  # a written snapshot, not the zero fill value
            assert ds.probe_features.isel(snapshot=-1).values.shape[0] == 100
            reads += 1
    finally:
        p.wait()
    assert p.returncode == 0, p.stderr.read()[-1000:]
    assert reads >= 3
    assert lrscope.open_run(next(out.glob("*.zarr"))).attrs["status"] == "completed"


# ----------------------------------------------------------------------------- concurrent sweeps
@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_two_sweep_processes_share_a_grid(tmp_path):
    spec = tmp_path / "grid.toml"
    spec.write_text(
        "[base]\ndataset='parity'\nwidths=[32,32]\nbatch_size=50\nprobe_size=100\nmax_steps=300\n"
        "stop='max-steps'\nsnapshot_every=50\ncheckpoint_every=50\n"
        "data_options={n_train=1000, n_test=300, core_bits=3, spurious_bits=1, noise_bits=8}\n"
        "[grid]\nlr=[0.05, 0.1]\nseed=[0, 1]\n")
    code = "import torch; torch.set_num_threads(1); from lrscope.cli.train import main; main()"
    cmd = [sys.executable, "-c", code, "sweep", str(spec), "--out", str(tmp_path / "shared"), "--quiet"]
    procs = [subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-1000:]
        assert "4 runs" in o and "4 completed" in o, o
    # every store is complete and equals a run trained alone
    solo = tmp_path / "solo"
    subprocess.run([*cmd[:4], str(spec), "--out", str(solo), "--quiet"], env=env(), check=True,
                   capture_output=True)
    for store in sorted((tmp_path / "shared").glob("*.zarr")):
        assert_same_store(solo / store.name, store)
    assert not list((tmp_path / "shared").glob("*.lock"))


@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_second_trainer_of_a_running_run_is_refused(tmp_path):
    out = tmp_path / "o"
    args = [a if a != "400" else "100000" for a in train_cmd(out)]
    p = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not list(out.glob("*.zarr")) or committed(next(out.glob("*.zarr"))) is None:
            assert time.time() - t0 < 60
            time.sleep(0.05)
        r = subprocess.run(args, env=env(), capture_output=True, text=True)
        assert r.returncode == 2 and "another process" in r.stderr and r.stderr.count("\n") == 1
    finally:
        p.kill()
        p.wait()


# ----------------------------------------------------------------------------- full disk
def test_full_disk_is_a_clean_error_and_resumable(tmp_path, tiny, disk_fills_up):
    from lrscope.train.loop import train_run

    ref = train_run(tiny(max_steps=200, stop="max-steps"), tmp_path / "ref", progress=False)
    free = disk_fills_up(7)  # during the 3rd checkpoint
    cfg = tiny(max_steps=200, stop="max-steps")
    argv = ["run", "--lr", "0.1", "--widths", "32,32", "--batch-size", "50", "--probe-size", "100",
            "--data-options", json.dumps(cfg.data_options), "--snapshot-every", "20", "--checkpoint-every", "40",
            "--max-steps", "200", "--stop", "max-steps", "--quiet", "--out", str(tmp_path / "full"),
            "--name", ref.path.stem]
    res = CliRunner().invoke(lrtrain, argv, catch_exceptions=False)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "resume" in lines[0]
    store = tmp_path / "full" / f"{ref.path.stem}.zarr"
    assert lrscope.open_run(store).attrs["status"] == "running"
    free()
    res = CliRunner().invoke(lrtrain, argv, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert_same_store(ref.path, store)


# ----------------------------------------------------------------------------- damaged stores
@pytest.fixture
def finished(tmp_path, tiny):
    from lrscope.train.loop import train_run

    return train_run(tiny(max_steps=60), tmp_path / "runs", progress=False).path


def one_line(res, *needles):
    lines = [ln for ln in res.output.splitlines() if ln.strip() and "%|" not in ln]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_corrupted_chunk(finished):
    chunks = [p for p in (finished / "snapshots" / "test_logits").rglob("*") if p.is_file() and p.name != "zarr.json"]
    chunks[-1].write_bytes(b"\x00garbage" * 10)
    one_line(CliRunner().invoke(lrprobe, ["compute", str(finished), "--quiet"]), "corrupted")


def test_truncated_array(finished):
    arr = zarr.open_array(str(finished / "log" / "loss"), mode="r+")
    arr.resize((arr.shape[0] - 5,))
    one_line(CliRunner().invoke(lrprobe, ["ls", str(finished)]), "truncated or corrupted")


def test_corrupted_metadata(finished):
    (finished / "zarr.json").write_text("{not json")
    one_line(CliRunner().invoke(lrprobe, ["ls", str(finished)]), "run store")
    one_line(CliRunner().invoke(lrtrain, ["run", "--lr", "0.1", "--out", str(finished.parent),
                                          "--name", finished.stem]), "run store")


def test_store_with_string_dtype_is_refused(finished):
    g = zarr.open_group(str(finished / "data" / "train"), mode="r+")
    with pytest.warns(zarr.errors.UnstableSpecificationWarning):  # fixed-width text: not a Zarr v3 type
        a = g.create_array("evil", shape=(2,), dtype="U5", dimension_names=["train_sample"])
    a[...] = np.array(["a", "b"])
    with pytest.raises(StoreError, match="refused"):
        lrscope.open_run(finished)


def test_store_with_pickle_codec_is_refused(finished):
    meta_path = finished / "log" / "loss" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"].insert(0, {"name": "numcodecs.pickle", "configuration": {"protocol": 5}})
    meta_path.write_text(json.dumps(meta))
    res = CliRunner().invoke(lrprobe, ["ls", str(finished)])
    one_line(res)
    assert "pickle" in res.output.lower() or "corrupted" in res.output


def test_probe_strings_round_trip_and_probe_pickle_is_refused(finished):
    """Probe results may carry text labels (variable-length UTF-8, no unstable fixed-width
    dtype); a probe array with a pickle codec is refused before xarray decodes it."""
    import xarray as xr

    from lrscope.store.probes import write_probe

    res = xr.Dataset({"fake_share": ("fake_region", [0.5, 0.25])}, coords={"fake_region": np.array(["core", "noise"])})
    write_probe(finished, "fake", res)
    ds = lrscope.open_run(finished)
    assert list(ds.fake_region.values) == ["core", "noise"] and float(ds.fake_share.sel(fake_region="noise")) == 0.25
    meta_path = finished / "probes" / "fake" / "fake_share" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"].insert(0, {"name": "numcodecs.pickle", "configuration": {"protocol": 5}})
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="pickle"):  # unknown to zarr, or refused by us
        lrscope.open_run(finished)


def test_nothing_unpickles():
    import pathlib

    root = pathlib.Path(lrscope.__file__).parent
    for py in root.rglob("*.py"):
        if ".venv" in py.parts or "tests" in py.parts:
            continue
        text = py.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, py
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, (py, line)


# ----------------------------------------------------------------------------- bad output folders
def test_unwritable_output_folder(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    one_line(CliRunner().invoke(lrtrain, ["run", "--lr", "0.1", "--out", str(f / "sub")]), "not a folder")
    one_line(CliRunner().invoke(lrtrain, ["run", "--lr", "0.1", "--out", "/proc/lrscope-out"]), "cannot")
    one_line(CliRunner().invoke(lrprobe, ["report", str(tmp_path), "-o", str(f / "r.html")]))


@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_local_pool_and_dask_local_cluster_write_identical_stores(tmp_path):
    """The same grid through the process pool and through a dask LocalCluster: every store equal
    array for array (one torch thread per run in both)."""
    from click.testing import CliRunner

    from lrscope.cli.train import main as lrtrain_cli
    from lrscope.train.sweep import expand_spec, run_sweep

    spec = {"base": {"dataset": "parity", "widths": [32, 32], "batch_size": 50, "probe_size": 100, "max_steps": 150,
                     "stop": "max-steps", "snapshot_every": 50, "checkpoint_every": 50,
                     "data_options": {"n_train": 600, "n_test": 300, "core_bits": 3, "spurious_bits": 1,
                                      "noise_bits": 8}},
            "grid": {"lr": [0.05, 0.2], "seed": [0, 1]}}
    configs = expand_spec(spec)
    pool = run_sweep(configs, tmp_path / "pool", workers=2, threads=1, progress=False)
    dask = run_sweep(configs, tmp_path / "dask", workers=2, scheduler="local", progress=False)
    assert sorted(r[1] for r in pool) == sorted(r[1] for r in dask) == ["completed"] * 4
    for store in sorted((tmp_path / "pool").glob("*.zarr")):
        assert_same_store(store, tmp_path / "dask" / store.name)
    # a second pass over the cluster finds everything done; an unreachable scheduler is one line
    again = run_sweep(configs, tmp_path / "dask", workers=1, scheduler="local", progress=False)
    assert all("nothing to do" in r[2] for r in again)
    (tmp_path / "s.toml").write_text("[grid]\nlr = [0.1]\n")
    res = CliRunner().invoke(lrtrain_cli, ["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "x"),
                                           "--scheduler", "tcp://127.0.0.1:9", "--quiet"])
    assert res.exit_code == 2 and "dask scheduler" in res.output and "Traceback" not in res.output


@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_a_probe_killed_while_written_is_recomputed(tmp_path):
    """SIGKILL while a probe is recomputed, with its old result unmarked but whole (crash point 1)
    or its new arrays written but not yet marked (3; 2 is after the old one is deleted): the next
    `compute` recomputes it."""
    from lrscope.store.reader import read_probes

    train_run(tiny_config(max_steps=40), tmp_path, progress=False)
    store = next(tmp_path.glob("*.zarr"))
    cmd = [sys.executable, "-c", "from lrscope.cli.probe import main; main()", "compute", str(store),
           "--only", "accuracy", "--quiet"]
    assert subprocess.run(cmd, env=env(), capture_output=True).returncode == 0
    for hit in (1, 3):
        killed = subprocess.run(cmd + ["--force"], env=env(LRSCOPE_CRASH_AT=f"probe:{hit}"), capture_output=True)
        assert killed.returncode == -9, killed.stderr
        again = subprocess.run(cmd, env=env(), capture_output=True, text=True)
        assert again.returncode == 0 and "1 probes computed" in again.stdout, again.stdout + again.stderr
        assert "unbiased_accuracy" in read_probes(store)


@pytest.mark.slow
def test_probing_on_workers_and_a_dask_cluster_matches_probing_in_turn(tmp_path):
    """`lrprobe compute --workers 2` and `--scheduler local` write the same probe results as one
    run after another; a damaged store among them is one line (exit 2), the others keep theirs."""
    import shutil

    from lrscope.store.reader import read_probes

    for lr in (0.05, 0.3):
        for seed in (0, 1):
            train_run(tiny_config(lr=lr, seed=seed, max_steps=60, stop="max-steps"), tmp_path / "serial",
                      progress=False)
    for mode in ("pool", "dask"):
        shutil.copytree(tmp_path / "serial", tmp_path / mode)
    only = ["--only", "accuracy,compressibility,representation", "--quiet"]
    modes = (("serial", []), ("pool", ["--workers", "2"]), ("dask", ["--workers", "2", "--scheduler", "local"]))
    for mode, extra in modes:
        res = CliRunner().invoke(lrprobe, ["compute", str(tmp_path / mode), *only, *extra])
        assert res.exit_code == 0, res.output
        assert "4 runs: 12 probes computed" in res.output, res.output
    for store in sorted((tmp_path / "serial").glob("*.zarr")):
        ref = read_probes(store)
        for mode in ("pool", "dask"):
            got = read_probes(tmp_path / mode / store.name)
            xr.testing.assert_identical(ref.drop_attrs(), got.drop_attrs())
    res = CliRunner().invoke(lrprobe, ["compute", str(tmp_path / "pool"), *only, "--workers", "2"])
    assert "0 probes computed, 12 up to date" in res.output, res.output
    # one store damaged: its probes fail in one line
    victim = sorted((tmp_path / "pool").glob("*.zarr"))[1]
    for chunk in (victim / "snapshots" / "test_logits").rglob("*"):
        if chunk.is_file() and chunk.name != "zarr.json":
            chunk.write_bytes(b"garbage")
    one_line(CliRunner().invoke(lrprobe, ["compute", str(tmp_path / "pool"), *only, "--workers", "2", "--force"]),
             victim.name)
    one_line(CliRunner().invoke(lrprobe, ["compute", str(tmp_path / "pool"), "--workers", "0"]), "--workers")


@pytest.mark.integration  # a subprocess killed or signalled: after the fast suite (make test-slow)
def test_sigterm_to_a_sweep_stops_its_workers(tmp_path):
    """SIGTERM to a `--workers 2` sweep: the workers checkpoint and stop (no orphans left
    training), pending runs are not started, the sweep exits 128+15, and a re-run resumes."""
    import signal

    spec = tmp_path / "grid.toml"
    spec.write_text(
        "[base]\ndataset='parity'\nwidths=[64,64]\nbatch_size=50\nprobe_size=100\nmax_steps=200000\n"
        "stop='max-steps'\nsnapshot_every=1000\ncheckpoint_every=200\n"
        "data_options={n_train=1000, n_test=300, core_bits=3, spurious_bits=1, noise_bits=8}\n"
        "[grid]\nlr=[0.05, 0.1, 0.2]\n")
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-c", CODE, "sweep", str(spec), "--out", str(out), "--workers", "2",
                          "--quiet"], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while len([s for s in out.glob("*.zarr") if (committed(s) or {}).get("checkpoint", 0) >= 2]) < 2:
        assert time.time() - t0 < 120 and p.poll() is None
        time.sleep(0.2)
    kids = subprocess.run(["pgrep", "-P", str(p.pid), "-f", "multiprocessing-fork"], capture_output=True,
                          text=True).stdout.split()
    assert len(kids) >= 2
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "resume" in err
    time.sleep(1)
    assert not [k for k in kids if os.path.exists(f"/proc/{k}")], "orphaned workers"
    stores = sorted(out.glob("*.zarr"))
    assert len(stores) == 2  # the third run was never started
    for s in stores:
        attrs = zarr.open_group(str(s), mode="r").attrs.asdict()
        assert attrs["status"] == "running" and "signal" in attrs["reason"]
