"""What a store says is data: never markup in a page, never control characters in a terminal; the
explorer's server answers only its own routes; a run just started (one commit at iteration 0) is
probed and reported."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from lrscope.cli.common import printable
from lrscope.cli.probe import main as lrprobe
from lrscope.cli.train import main as lrtrain
from lrscope.viz.app import md_text

HOSTILE = 'r1<img src=x onerror="window.__xss=1"><b class="xss">bold</b>'
ESCAPES = "\x1b[2J\x1b[31mOWNED\x1b]0;pwned\x07"
LRPROBE = str(Path(sys.executable).parent / "lrprobe")


def _edit_root(store: Path, **attrs) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"].update(attrs)
    (store / "zarr.json").write_text(json.dumps(meta))


def test_printable_escapes_every_control_character():
    assert printable("plain run-1 0.5") == "plain run-1 0.5"
    out = printable(ESCAPES + "\nfake row\u202eevil")
    assert out.isprintable() and "\\x1b" in out and "\\n" in out and "\\u202e" in out


def test_markdown_text_is_never_markup():
    from markdown_it import MarkdownIt  # what Panel's Markdown pane renders with

    html = MarkdownIt("commonmark", {"html": True}).render(f"sample 3 of {md_text(HOSTILE)} [x](javascript:y)")
    assert "<img" not in html and "<b" not in html and "&lt;img" in html
    assert MarkdownIt("commonmark", {"html": True}).render(md_text("[a](javascript:alert(1))")).count("<a") == 0


def test_cli_lines_show_store_strings_escaped(tiny, tmp_path):
    """A finished run whose status reason carries terminal escapes and a newline: `lrtrain run`
    (already completed) prints it escaped on one line, `lrprobe ls` prints no control character."""
    cfg = tiny(max_steps=20, snapshot_every=10, checkpoint_every=10)
    args = ["run", "--quiet", "--dataset", "parity", "--model", "fcn", "--widths", "32,32", "--lr", "0.1",
            "--data-options", json.dumps(cfg.data_options), "--max-steps", "20", "--snapshot-every", "10",
            "--checkpoint-every", "10", "--probe-size", "100", "--batch-size", "50", "--out", str(tmp_path)]
    assert CliRunner().invoke(lrtrain, args).exit_code == 0
    (store,) = tmp_path.glob("*.zarr")
    _edit_root(store, reason=ESCAPES + "\ncompleted 99999 1.000")
    res = CliRunner().invoke(lrtrain, args)
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert len(lines) == 2 and all(ln.isprintable() for ln in lines) and "\\x1b[2J" in lines[0], lines
    res = CliRunner().invoke(lrprobe, ["ls", str(tmp_path)])
    assert res.exit_code == 0 and len(res.output.splitlines()) == 2
    assert all(ln.isprintable() for ln in res.output.splitlines())


def _commit_once_then_die(out: Path) -> Path:
    """A run whose process died right after its first commit (iteration 0: one snapshot, one
    checkpoint, no training step): what a run looks like while it starts."""
    code = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import tiny_config
from lrscope.store.writer import RunWriter
from lrscope.train.loop import train_run
real = RunWriter.commit
def commit(self, *a, **k):
    real(self, *a, **k)
    os._exit(3)
RunWriter.commit = commit
train_run(tiny_config(), {str(out)!r}, progress=False)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr
    (store,) = out.glob("*.zarr")
    assert json.loads((store / "zarr.json").read_text())["attributes"]["committed"] == \
        {"iteration": 0, "snapshot": 1, "checkpoint": 1}
    return store


def test_a_run_at_its_first_commit_probes_and_reports(tmp_path):
    store = _commit_once_then_die(tmp_path / "runs")
    res = CliRunner().invoke(lrprobe, ["compute", str(tmp_path / "runs"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "loss_ratio: not defined: no training step is committed yet" in res.output
    import lrscope

    ds = lrscope.open_run(store)
    assert "unbiased_accuracy" in ds and ds.sizes["snapshot"] == 1  # what the prefix allows is computed
    assert "csi_mean" in ds and "dyn_presentations" in ds
    res = CliRunner().invoke(lrprobe, ["report", str(tmp_path / "runs"), "-o", str(tmp_path / "r.html"),
                                       "--no-compute"])
    assert res.exit_code == 0, res.output
    assert "interrupted" in (tmp_path / "r.html").read_text()


# ----------------------------------------------------------------------------- the server's routes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, **headers) -> int:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.integration
def test_server_answers_only_its_routes_and_imports_nothing_from_a_url(tiny_sweep, tmp_path):
    port = _free_port()
    proc = subprocess.Popen([LRPROBE, "serve", str(tiny_sweep), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while "lrscope explorer at" not in proc.stdout.readline():
            assert proc.poll() is None and time.time() < deadline, "lrprobe serve did not start"
        base = f"http://127.0.0.1:{port}"
        # the request: Panel's component route imported the module named in the URL
        assert _get(f"{base}/components/this/x/css/y", Host="evil.com") == 403
        assert _get(f"{base}/components/this/x/css/y") == 404
        assert _get(f"{base}/components/antigravity/x/css/y") == 404
        for path in ("/autoload.js", "/metadata", "/anything"):
            assert _get(base + path) == 404, path
        assert _get(base + "/") == 200 and _get(base + "/static/js/bokeh.min.js") == 200
        assert _get(f"http://localhost:{port}/") == 200
        for path in ("/", "/static/js/bokeh.min.js"):  # DNS rebinding and cross-site requests
            assert _get(base + path, Host=f"evil.com:{port}") == 403
            assert _get(base + path, Origin="http://evil.com") == 403
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert "Beautiful is better than ugly" not in out  # `this` was never imported


def test_hostile_identifiers_keep_a_store_out_of_the_explorer(tiny_sweep, tmp_path):
    from lrscope.viz.app import discover

    runs = tmp_path / "runs"
    shutil.copytree(tiny_sweep, runs)
    bad = sorted(runs.glob("*.zarr"))[0]
    _edit_root(bad, run_id=HOSTILE)
    groups = discover([runs])
    shown = [r.run_id for rs in groups.values() for r in rs]
    assert len(shown) == 3 and HOSTILE not in shown


def test_the_recording_api_never_writes_inside_a_store(tmp_path):
    """`lrscope.Recorder` takes its output folder through the same check as lrtrain."""
    import torch

    import lrscope
    from lrscope.errors import StoreError

    store = tmp_path / "runs" / "r.zarr"
    store.mkdir(parents=True)
    (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                 "attributes": {"lrscope": "run"}}))
    x, y = torch.randn(20, 4), torch.arange(20) % 2
    data = lrscope.bundle_from_arrays(train=(x, y, None), test=(x, y, None), name="toy")
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    before = sorted(p.name for p in store.rglob("*"))
    with pytest.raises(StoreError, match="inside the run store"):
        lrscope.Recorder(store / "probes", model=net, features_at="2", optimizer=torch.optim.SGD(net.parameters(), 0.1),
                         data=data, config={"batch_size": 10, "max_steps": 4})
    assert sorted(p.name for p in store.rglob("*")) == before
