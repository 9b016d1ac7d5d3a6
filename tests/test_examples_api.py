"""The recording-API examples run as written (no arguments, from another folder, writing under
./runs), and every reader takes their stores: open_run / open_sweep here, `lrprobe compute` and
`lrprobe report` in other processes, and `lrprobe serve` (the page is served; the explorer's data
layer reads them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import lrscope

pytestmark = pytest.mark.integration  # subprocesses (house rule: make test-slow)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LRPROBE = str(Path(sys.executable).parent / "lrprobe")


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run(args, cwd, timeout=600):
    r = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_once(runs: Path) -> str:
    """Start `lrprobe serve` on `runs`, fetch its page, stop it; the page's HTML."""
    port = free_port()
    proc = subprocess.Popen([LRPROBE, "serve", str(runs), "--port", str(port)], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            line = proc.stdout.readline()
            if "lrscope explorer at" in line:
                break
            assert proc.poll() is None, f"lrprobe serve exited: {proc.stdout.read()}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=120) as r:
            assert r.status == 200
            return r.read().decode()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def check_readers(folder: Path, n_runs: int, group: str) -> None:
    runs = folder / "runs"
    stores = sorted(runs.glob("*.zarr"))
    assert len(stores) == n_runs
    for p in stores:
        ds = lrscope.open_run(p)
        assert ds.attrs["status"] == "completed" and ds.attrs["model_info"]["recorded_by"] == "lrscope.Recorder"
    out = run([LRPROBE, "compute", "runs"], folder)
    assert "not defined" in out  # pruning and attributions: the network is the user's class
    run([LRPROBE, "report", "runs", "-o", "report.html"], folder)
    html = (folder / "report.html").read_text()
    assert all(p.stem in html for p in stores)
    sw = lrscope.open_sweep(runs)
    assert sw.sizes["run"] == n_runs and sw.unbiased_accuracy_final.notnull().all()
    assert (sw.activation_compressibility_final.notnull()).all() and sw.csi_mean_final.notnull().all()
    from lrscope.viz.app import SweepData, discover

    groups = discover([runs])
    assert list(groups) == [group]
    d = SweepData.load(groups[group])
    assert len(d.scalars["unbiased_accuracy_final"]) == n_runs
    assert "bokeh" in serve_once(runs).lower()


def test_own_loop_example(tmp_path):
    out = run([sys.executable, str(EXAMPLES / "own_loop.py")], tmp_path)
    assert out.count("completed at iteration 840") == 2
    files = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    out = run([sys.executable, str(EXAMPLES / "own_loop.py")], tmp_path)  # finished runs: nothing to do
    assert out.count("completed at iteration 840") == 2
    # not a byte written: no step trained, no metadata rewritten (a timing bound here failed under load)
    assert files == {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    check_readers(tmp_path, 2, "digits_patch / Net")
    sw = lrscope.open_sweep(tmp_path / "runs")
    # the paper's effect on this small set: the large LR relies less on the spurious patch
    acc = sw.unbiased_accuracy_final.sortby(sw.lr).values
    assert acc[1] > acc[0]


def test_lightning_example(tmp_path):
    pytest.importorskip("lightning")
    out = run([sys.executable, str(EXAMPLES / "lightning_callback.py")], tmp_path)
    assert "completed" in out
    check_readers(tmp_path, 1, "digits_patch / DigitsModule")
