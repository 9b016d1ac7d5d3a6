"""Hostile strings in a store's attributes, shown by the explorer (`lrprobe serve`) and the HTML
report in real Chromium (Debian's, driven by Playwright through `executable_path`): no element
and no script they carry appears in the page. Every attribute either page shows from a store is
made hostile: the status reason, and each probe variable's long_name, description and units; a
store whose run id is hostile is refused (not shown at all)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from test_app_browser import CHROMIUM, FLAGS, start_server

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make system installs it)"),
              pytest.mark.integration]
playwright = pytest.importorskip("playwright.sync_api")

PAYLOAD = '<img src=x onerror="window.__xss=(window.__xss||0)+1"><b class="xss">bold</b><script>window.__xss=9</script>'

# every element of the page, through the shadow roots Bokeh and Panel draw into
FIND = """() => {
    const hits = [];
    const walk = (root) => {
        for (const el of root.querySelectorAll('*')) {
            if ((el.tagName === 'IMG' && el.getAttribute('src') === 'x') || el.classList.contains('xss')
                || (el.tagName === 'SCRIPT' && (el.textContent || '').includes('__xss'))) hits.push(el.outerHTML);
            if (el.shadowRoot) walk(el.shadowRoot);
        }
    };
    walk(document);
    return {hits, xss: window.__xss === undefined ? null : window.__xss};
}"""


def make_hostile(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    stores = sorted(dst.glob("*.zarr"))
    for store in stores:
        meta = json.loads((store / "zarr.json").read_text())
        meta["attributes"]["reason"] = "stopped " + PAYLOAD
        (store / "zarr.json").write_text(json.dumps(meta))
        for var in (store / "probes").glob("*/*/zarr.json"):
            m = json.loads(var.read_text())
            if m.get("node_type") == "array":
                m.setdefault("attributes", {}).update(long_name="name " + PAYLOAD, description="desc " + PAYLOAD,
                                                       units="u " + PAYLOAD)
                var.write_text(json.dumps(m))
    refused = dst / "refused.zarr"  # a hostile run id: the store is not shown
    shutil.copytree(stores[0], refused)
    meta = json.loads((refused / "zarr.json").read_text())
    meta["attributes"]["run_id"] = "r1" + PAYLOAD
    (refused / "zarr.json").write_text(json.dumps(meta))


def _set_sample(page, value: int) -> None:
    page.evaluate("""(v) => {
        for (const doc of Bokeh.documents) for (const m of doc.all_models)
            if ((m.css_classes || []).includes('lrscope-sample')) { m.value = v; return; }
        throw new Error('no sample input');
    }""", value)


def test_control_the_search_finds_injected_markup(tmp_path):
    page_file = tmp_path / "bad.html"
    page_file.write_text(f"<html><body><div>{PAYLOAD}</div></body></html>")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page()
        page.goto(page_file.as_uri())
        time.sleep(0.5)
        found = page.evaluate(FIND)
        browser.close()
    assert found["hits"] and found["xss"]


def test_hostile_attributes_in_the_explorer_and_the_report(tiny_sweep, tmp_path):
    from lrscope.viz.report import write_report

    runs = tmp_path / "runs"
    make_hostile(tiny_sweep, runs)
    shown = tmp_path / "shown"  # the report is written over the runs it can read
    shown.mkdir()
    for s in runs.glob("*.zarr"):
        if s.name != "refused.zarr":
            os.symlink(s, shown / s.name)
    report = tmp_path / "report.html"
    write_report(shown, report)
    assert "stopped &lt;img" in report.read_text() or "name &lt;img" in report.read_text()  # the text is shown

    proc, url = start_server([runs])
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            t0 = time.time()
            while page.locator("canvas").count() < 6:
                assert time.time() - t0 < 90, "the plots were not drawn"
                time.sleep(0.1)
            results = [page.evaluate(FIND)]
            options = page.locator(".lrscope-metric select option").all_inner_texts()
            assert any("name <img" in o for o in options), options  # the hostile long name, shown as text
            assert not any("r1<img" in o for o in page.locator(".lrscope-run select option").all_inner_texts())
            for value in (0, 10**6):  # the trigger: a sample shown, one out of range
                _set_sample(page, value)
                time.sleep(3)
                results.append(page.evaluate(FIND))
            page.goto(report.as_uri())
            time.sleep(3)
            results.append(page.evaluate(FIND))
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)
    for r in results:
        assert r == {"hits": [], "xss": None}, r
