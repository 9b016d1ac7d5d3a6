"""The HTML report in a real browser (Debian's headless Chromium): no JavaScript errors, and the
plots are drawn (coloured pixels in a screenshot), with no network access needed."""

import shutil
import subprocess

import numpy as np
import pytest

from lrscope.viz.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make system installs it)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=8000"]

# Injected first into <head>: records uncaught errors, rejected promises and console.error calls
# into a DOM node that --dump-dom then shows.
CATCHER = """<script>
window.__errs = [];
function __rec(m){ window.__errs.push(String(m)); var n=document.getElementById('__errs');
  if(n){ n.textContent = JSON.stringify(window.__errs); } }
window.addEventListener('error', function(e){ __rec('error: ' + e.message); });
window.addEventListener('unhandledrejection', function(e){ __rec('rejection: ' + e.reason); });
var __ce = console.error;
console.error = function(){ __rec('console.error: ' + Array.from(arguments).join(' '));
  __ce.apply(console, arguments); };
document.addEventListener('DOMContentLoaded', function(){ var d=document.createElement('pre'); d.id='__errs';
  d.textContent = JSON.stringify(window.__errs); document.body.appendChild(d); });
</script>"""


def chromium(tmp_path, *args):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def report(tiny_sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    write_report(tiny_sweep, out)
    return out


def test_report_has_no_javascript_errors(report, tmp_path):
    html = report.read_text()
    assert "https://" not in html.split("<body", 1)[0] or "cdn.bokeh.org" not in html
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + CATCHER, 1))
    r = chromium(tmp_path, "--dump-dom", probe.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    assert '<pre id="__errs">[]</pre>' in r.stdout, r.stdout[-3000:]
    # the control: the catcher does see an error when there is one
    bad = tmp_path / "bad.html"
    bad.write_text("<html><head>" + CATCHER + "</head><body><script>undefinedFn()</script></body></html>")
    r = chromium(tmp_path, "--dump-dom", bad.as_uri())
    assert "undefinedFn" in r.stdout


def test_report_plots_are_drawn(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    r = chromium(tmp_path, "--window-size=1100,2400", f"--screenshot={shot}", report.as_uri())
    assert shot.exists(), r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # text and table rules are grey; plotted lines and markers use the viridis palette
    saturation = img.max(-1) - img.min(-1)
    coloured = int((saturation > 60).sum())
    assert coloured > 3000, f"only {coloured} coloured pixels: plots not drawn?"
    # and a blank page has none: the check can fail
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body><h1>nothing</h1></body></html>")
    shot2 = tmp_path / "blank.png"
    chromium(tmp_path, "--window-size=1100,2400", f"--screenshot={shot2}", blank.as_uri())
    img2 = np.asarray(Image.open(shot2).convert("RGB")).astype(int)
    assert int(((img2.max(-1) - img2.min(-1)) > 60).sum()) < 100
