"""`lrprobe serve` in a real browser: the real CLI starts a real Bokeh/Panel server on a free
port, Debian's headless Chromium (driven by Playwright through `executable_path`; nothing is
downloaded) opens it, changes widgets and a selection, checks that the plots change and that the
console stays clean, and records first-paint and interaction latencies (printed, and written to
$LRSCOPE_APP_TIMINGS when set: benchmarks/app_bench.py uses it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make system installs it)"),
              pytest.mark.integration]
playwright = pytest.importorskip("playwright.sync_api")

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
LRPROBE = str(Path(sys.executable).parent / "lrprobe")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(paths, *extra) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([LRPROBE, "serve", *map(str, paths), "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if "lrscope explorer at" in line:
            return proc, url
        if proc.poll() is not None:
            raise AssertionError(f"lrprobe serve exited: {proc.stdout.read()}")
    raise AssertionError("lrprobe serve did not start")


def status(page) -> str:
    return page.locator(".lrscope-status pre").inner_text(timeout=30000)


def wait_status_change(page, old: str, timeout: float = 30) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        s = page.locator(".lrscope-status pre").inner_text()
        if s != old:
            return time.time() - t0
        time.sleep(0.01)
    raise AssertionError(f"no update after {timeout} s (status still {old!r})")


def open_app(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"failed request {r.url}"))
    t0 = time.time()
    page.goto(url)
    while page.locator("canvas").count() < 6:
        assert time.time() - t0 < 60, "the plots were not drawn"
        time.sleep(0.02)
    return page, errors, time.time() - t0


def drive(paths, shots: Path | None = None) -> dict:
    """Start the server on `paths`, drive the app, return the timings."""
    proc, url = start_server(paths)
    timings = {}
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page, errors, timings["first_paint_s"] = open_app(browser, url)
            page.wait_for_function("() => true")
            s0 = status(page)
            if shots:
                page.screenshot(path=str(shots / "app.png"), full_page=True)

            # the metric selector: another metric, another plot title
            sel = page.locator(".lrscope-metric select")
            options = sel.locator("option").all_inner_texts()
            assert len(options) > 3, options
            before = page.locator("canvas").first.screenshot()
            old = status(page)
            t0 = time.time()
            sel.select_option(index=(options.index(sel.evaluate("e => e.selectedOptions[0].text")) + 1) % len(options))
            wait_status_change(page, old)
            timings["metric_change_s"] = time.time() - t0
            time.sleep(0.5)
            assert page.locator("canvas").first.screenshot() != before, "the metric plot did not change"

            # the iteration slider: one step back through training, a few times
            handle = page.locator(".lrscope-iteration .noUi-handle").first
            lat = []
            for _ in range(3):
                old = status(page)
                handle.focus()
                t0 = time.time()
                page.keyboard.press("ArrowLeft")
                wait_status_change(page, old)
                lat.append(time.time() - t0)
                assert "iteration" in status(page)
            timings["slider_s"] = sorted(lat)[len(lat) // 2]

            # a selection in the data map (what a tap does to the plot's data source)
            old = status(page)
            t0 = time.time()
            page.evaluate("""() => {
                for (const doc of Bokeh.documents) for (const m of doc.all_models) {
                    if (m.type === 'ColumnDataSource' && m.data.kind !== undefined && m.data.sample !== undefined) {
                        m.selected.indices = [3];
                        return;
                    }
                }
                throw new Error('no data-map source');
            }""")
            wait_status_change(page, old, timeout=60)
            timings["sample_select_s"] = time.time() - t0
            m = re.search(r"sample (\d+)", status(page))  # the map's 4th point (maps of big runs are subsampled)
            assert m, status(page)
            page.get_by_text(re.compile(rf"sample {m.group(1)} — y = \d")).first.wait_for(timeout=30000)  # its summary
            if shots:
                time.sleep(1)
                page.screenshot(path=str(shots / "app-sample.png"), full_page=True)
            assert s0  # the status line is there from the start
            assert not errors, errors
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return timings


def test_serve_in_a_browser(tiny_sweep, tmp_path):
    from lrscope.probe.runner import compute_paths

    compute_paths(tiny_sweep, ["dynamics"], progress=False)
    shots = Path(os.environ["LRSCOPE_APP_SHOTS"]) if os.environ.get("LRSCOPE_APP_SHOTS") else None
    t = drive([tiny_sweep], shots)
    print("app timings:", json.dumps(t))
    if os.environ.get("LRSCOPE_APP_TIMINGS"):
        Path(os.environ["LRSCOPE_APP_TIMINGS"]).write_text(json.dumps(t))
    assert t["first_paint_s"] < 30 and t["slider_s"] < 5


def test_serve_in_a_browser_on_runs_of_a_users_own_loop(tmp_path):
    """The stores examples/own_loop.py records through lrscope.Recorder (a user's network and
    data, two LRs) drive the same app, the sample view included (its attributions are not
    available: the network is the user's class)."""
    from lrscope.probe.runner import compute_paths

    example = Path(__file__).resolve().parent.parent / "examples" / "own_loop.py"
    subprocess.run([sys.executable, str(example)], cwd=tmp_path, check=True, capture_output=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    compute_paths(tmp_path / "runs", progress=False)
    t = drive([tmp_path / "runs"])
    assert t["first_paint_s"] < 30 and t["slider_s"] < 5


def test_serve_refuses_a_path_without_runs(tmp_path):
    r = subprocess.run([LRPROBE, "serve", str(tmp_path), "--port", str(free_port())], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("Error:"), r.stderr


def test_serve_on_a_taken_port_is_one_line(tiny_sweep):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([LRPROBE, "serve", str(tiny_sweep), "--port", str(port)], capture_output=True,
                           text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Address already in use" in r.stderr, r.stderr
