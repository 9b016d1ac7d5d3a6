"""examples/explore.ipynb and the README's notebook snippet, executed end to end in a Jupyter
kernel (nbclient) on a small probed sweep: any cell error fails the test."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "explore.ipynb"
LRS = (0.01, 0.75)  # the demo's lowest and highest, which the README's snippet names


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """Four tiny parity runs (2 LRs x 2 seeds), named as the demo's runs are, every probe
    computed."""
    from lrscope.probe.runner import compute_paths

    out = tmp_path_factory.mktemp("notebook") / "demo" / "runs"
    for lr in LRS:
        for seed in (0, 1):
            cfg = RunConfig(dataset="parity", model="fcn", widths=[16], lr=lr, seed=seed, max_steps=200,
                            stop="max-steps", probe_size=40, data_options={"n_train": 400, "n_test": 400})
            train_run(cfg, out, run_id=f"parity-fcn-lr{lr:g}-s{seed}", progress=False)
    compute_paths(out, progress=False)
    return out


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel; a cell error raises CellExecutionError (with its traceback)."""
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_explore_notebook_runs_end_to_end(small_sweep, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.outputs for c in code), "commit the notebook without outputs"
    source = "\n".join(c.source for c in code)
    for needed in ("LRSCOPE_SWEEP", "open_sweep", "hv.HoloMap", "dyn_confidence", "dyn_variability", "batch_logits",
                   "batch_index", "probe."):
        assert needed in source, needed
    monkeypatch.setenv("LRSCOPE_SWEEP", str(small_sweep))
    execute(nb, NOTEBOOK.parent)
    out = outputs(nb)
    assert not [o for o in out if o.output_type == "error"]
    text = "\n".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in out)
    assert "parity-fcn-lr0.75-s1" in text  # the runs table: it read the sweep it was pointed at
    assert ":HoloMap   [iteration]" in text and "y=0,b=1" in text
    assert sum("application/vnd.holoviews_exec.v0+json" in o.get("data", {}) for o in out) >= 5  # figures rendered


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"In a notebook.*?```python\n(.*?)```", text, re.S)
    assert m, "README: no python block after 'In a notebook'"
    return m.group(1)


def test_readme_notebook_snippet_runs_as_written(small_sweep):
    snippet = readme_snippet()
    assert 'hv.extension("bokeh")' in snippet and 'open_sweep("demo/runs")' in snippet
    # as written: the small sweep lies at demo/runs of the kernel's folder, with the demo's run ids and end LRs
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(snippet)])
    execute(nb, small_sweep.parent.parent)
    out = outputs(nb)
    assert not [o for o in out if o.output_type == "error"]
    assert any("application/vnd.holoviews_exec.v0+json" in o.get("data", {}) for o in out)  # the last line displays


@pytest.mark.parametrize("lrs", [(0.75,), (0.01, 0.75)], ids=["one-run", "two-runs"])
def test_explore_notebook_runs_on_a_small_sweep(lrs, tmp_path, monkeypatch):
    """Pointed at a sweep with fewer runs than a cell needs (Fig. 12's correlation: 3 completed runs;
    Fig. 8's selection: two learning rates), the notebook says so in that cell's output and goes on."""
    from lrscope.probe.runner import compute_paths

    out = tmp_path / "runs"
    for lr in lrs:
        cfg = RunConfig(dataset="parity", model="fcn", widths=[16], lr=lr, max_steps=120, stop="max-steps",
                        probe_size=40, data_options={"n_train": 400, "n_test": 400})
        train_run(cfg, out, run_id=f"parity-fcn-lr{lr:g}-s0", progress=False)
    compute_paths(out, progress=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("LRSCOPE_SWEEP", str(out))
    execute(nb, NOTEBOOK.parent)
    out_ = outputs(nb)
    assert not [o for o in out_ if o.output_type == "error"]
    text = "\n".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in out_)
    assert "Fig. 12 skipped, this sweep has too few runs: the correlation needs at least 3 completed runs" in text
    assert ("Fig. 8's selection skipped" in text) == (len(lrs) == 1)
    assert sum("application/vnd.holoviews_exec.v0+json" in o.get("data", {}) for o in out_) >= 5
