"""The explorer's data layer and views, without a browser (the browser test is
tests/test_app_browser.py): what it reads from the stores is what the stores hold."""

from __future__ import annotations

import numpy as np
import pytest

import lrscope


@pytest.fixture(scope="module")
def sweep(tiny_sweep):
    from lrscope.probe.runner import compute_paths

    compute_paths(tiny_sweep, ["dynamics", "loss_ratio", "attributions"], progress=False)
    return tiny_sweep


def test_discover_groups_runs_by_dataset_and_model(sweep):
    from lrscope.viz.app import discover

    groups = discover([sweep])
    assert list(groups) == ["parity / fcn"]
    runs = groups["parity / fcn"]
    assert [(r.lr, r.seed) for r in runs] == [(0.02, 0), (0.02, 1), (0.5, 0), (0.5, 1)]


def test_the_explorer_the_report_and_the_figures_group_runs_alike(sweep, tmp_path):
    """One grouping into sweeps (store.reader.group_sweeps): the explorer's groups are the report's
    and the static figures' sections, run for run, also with a second (dataset, model) beside."""
    import shutil

    import zarr

    from lrscope.viz.app import discover
    from lrscope.viz.report import sections_for

    d = tmp_path / "two"
    shutil.copytree(sweep, d)
    other = sorted(d.glob("*.zarr"))[0]
    g = zarr.open_group(str(other), mode="r+")
    g.attrs["config"] = dict(g.attrs["config"], model="cnn")
    app = {k: sorted(str(r.path) for r in rs) for k, rs in discover([d]).items()}
    report = {f"{ds} / {m}": sorted(map(str, ps)) for (ds, m), ps in sections_for([d]).items()}
    assert app == report and sorted(app) == ["parity / cnn", "parity / fcn"] and len(app["parity / cnn"]) == 1


def test_sweep_data_matches_the_stores(sweep):
    from lrscope.viz.app import SweepData, discover

    runs = discover([sweep])["parity / fcn"]
    d = SweepData.load(runs)
    for i, r in enumerate(runs):
        ds = lrscope.open_run(r.path)
        assert d.scalars["unbiased_accuracy_final"][i] == pytest.approx(float(ds.unbiased_accuracy_final))
        np.testing.assert_array_equal(d.snap_iter[i], ds.snapshot_iteration.values)
        np.testing.assert_allclose(d.neurons["csi"][i], ds.csi.transpose("snapshot", "neuron").values)
        x, y = d.curves["loss"][i]
        assert len(x) == ds.sizes["iteration"]  # short runs: every iteration
        np.testing.assert_allclose(y, ds.loss.values.astype(float))
        _, ratio = d.curves["bc_share"][i]  # the BC loss ratio is the loss_ratio probe's, as stored
        np.testing.assert_array_equal(ratio, ds.loss_ratio.values.astype(float))
        assert np.isfinite(ratio).any()


def test_the_metric_plot_is_the_reports_metric_panel(sweep):
    """The explorer's metric against the LR is figures.metric_panel: the same points and the same
    seed means (of the completed runs) as the report's panel on the sweep."""
    import holoviews as hv

    from lrscope.viz import figures as F
    from lrscope.viz.app import Explorer

    e = Explorer([sweep])
    e.w_seeds.value = e.w_seeds.options  # every seed: the whole sweep
    sw = lrscope.open_sweep(sweep)
    for var in ("unbiased_accuracy_final", "max_loss_ratio"):
        got = e.metric_vs_lr(var, e.w_seeds.value, None)
        want = F.metric_panel(sw, var)
        for kind in (hv.Points, hv.Curve, hv.Spread):
            a = [el for el in got.values() if isinstance(el, kind)][0]
            b = [el for el in want.values() if isinstance(el, kind)][0]
            order = np.argsort(a.dimension_values(0), kind="stable") if kind is hv.Points else slice(None)
            border = np.argsort(b.dimension_values(0), kind="stable") if kind is hv.Points else slice(None)
            np.testing.assert_allclose(np.sort(a.dimension_values(1)[order]), np.sort(b.dimension_values(1)[border]))
        _, mean, _ = F.per_lr(sw, var)
        curve = [el for el in got.values() if isinstance(el, hv.Curve)][0]
        np.testing.assert_allclose(curve.dimension_values(1), mean)


def test_sample_trajectory_is_the_logged_true_class_probability(sweep):
    from lrscope.viz.app import discover, sample_trajectory

    run = discover([sweep])["parity / fcn"][2]
    ds = lrscope.open_run(run.path)
    idx, logits, y = ds.batch_index.values, ds.batch_logits.values.astype(np.float64), ds.train_y.values
    sample = 7
    want_it, want_p = [], []
    for t in range(idx.shape[0]):  # brute force over the log
        for s in range(idx.shape[1]):
            if idx[t, s] == sample:
                z = logits[t, s]
                want_it.append(t)
                want_p.append(np.exp(z[y[sample]] - z.max()) / np.exp(z - z.max()).sum())
    it, p = sample_trajectory(run, sample)
    np.testing.assert_array_equal(it, want_it)
    np.testing.assert_allclose(p, want_p, rtol=1e-5)  # the dynamics probe's float32 softmax
    # the dynamics probe's rule: the trajectory's mean is the sample's stored confidence
    assert p.mean() == pytest.approx(float(ds.dyn_confidence.values[sample]), rel=1e-6)  # stored as float32


def test_sample_attributions_take_the_attributions_probes_path(sweep):
    """The explorer's Integrated Gradients of an input is what the attributions probe stores for it:
    given a probe input whose map the probe kept (last attributed checkpoint), the same numbers."""
    from lrscope.store.reader import read_probe
    from lrscope.viz.app import Explorer, discover

    run = discover([sweep])["parity / fcn"][3]
    ds = lrscope.open_run(run.path)
    res = read_probe(run.path, "attributions")
    k = 1
    x = ds.probe_inputs.values[int(res.map_sample_index.values[k])]
    got = Explorer([sweep])._attribution(run, ds, x, int(res.map_y.values[k]))
    np.testing.assert_allclose(got, res.ig_maps.values[k], rtol=1e-5, atol=1e-7)
    assert np.abs(got).sum() > 0


def test_views_build_and_the_slider_moves_them(sweep):
    import holoviews as hv

    from lrscope.viz.app import Explorer

    e = Explorer([sweep])
    e.layout()
    its = e.w_iter.options
    a = e.selectivity(its[1], e.w_seeds.value, None, "csi")
    b = e.selectivity(its[-1], e.w_seeds.value, None, "csi")
    assert isinstance(a, hv.Overlay) and len(a) == 2  # one curve per LR
    assert not np.allclose(a.values()[1].dimension_values(1), b.values()[1].dimension_values(1))
    m = e.metric_vs_lr("unbiased_accuracy_final", e.w_seeds.value, None)
    assert len([el for el in m.values() if isinstance(el, hv.Points)][0]) == 4  # every run a point
    views = e.sample_views(5, e.w_run.value, e.w_seeds.value, None)
    assert "sample 5" in views[0].object


def test_a_big_data_map_keeps_every_bias_conflicting_sample_and_selects_the_right_one(sweep, monkeypatch):
    import lrscope.viz.app as app

    monkeypatch.setattr(app, "MAX_MAP_POINTS", 100)
    e = app.Explorer([sweep])
    pts = e.data_map(e.w_run.value, None)
    ds = e.data.dataset(e.w_run.value)
    bc = ds.train_bias_conflicting.values.astype(bool)
    shown = pts.dimension_values("sample")
    assert len(shown) == max(100, bc.sum()) < len(bc)
    assert set(np.flatnonzero(bc)) <= set(shown.tolist())
    e._on_select([5])
    assert e.w_sample.value == int(shown[5])
    np.testing.assert_allclose(pts.dimension_values("confidence"), ds.dyn_confidence.values[shown])


def test_live_refresh_keeps_the_users_choices(sweep, tmp_path):
    """--live: a run that trains on is re-read; the metric, seeds and run chosen stay chosen."""
    import shutil

    import zarr

    from lrscope.viz.app import Explorer

    d = tmp_path / "live"
    shutil.copytree(sweep, d)
    e = Explorer([d], live=True)
    metrics = list(e.w_metric.options.values())
    e.w_metric.value = metrics[-1]
    e.w_seeds.value = [1]
    before = e.updates
    store = sorted(d.glob("*.zarr"))[0]
    g = zarr.open_group(str(store), mode="r+")  # the run "moved on": its status changes
    g.attrs["status"] = "running"
    e.refresh()
    assert e.updates > before and "refreshed 1 run" in e.status.object
    assert e.w_metric.value == metrics[-1] and e.w_seeds.value == [1]
    assert e.data.runs[0].status == "running"


def test_no_module_outside_store_reads_zarr_json():
    """Runs are read through the store's reader (store/reader.py: checked attributes, checked
    arrays, `store_exists`, `half_created`): no module of lrscope outside store/, nor a benchmark,
    names a zarr.json in code (comments aside)."""
    from pathlib import Path

    root = Path(lrscope.__file__).resolve().parent
    found = [f"{p.relative_to(root)}: {line.strip()}" for p in root.rglob("*.py")
             if not {"store", "tests", ".venv"} & set(p.relative_to(root).parts[:1])
             for line in p.read_text().splitlines()
             if "zarr.json" in line.split("#")[0] and not line.strip().startswith(('"', "'"))]
    assert not found, found
    assert (root / "store" / "reader.py").read_text().count("zarr.json") >= 1  # the check looks where it should
