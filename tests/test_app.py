"""The explorer's data layer and views, without a browser (the browser test is
tests/test_app_browser.py): what it reads from the stores is what the stores hold."""

from __future__ import annotations

import numpy as np
import pytest

import lrscope


@pytest.fixture(scope="module")
def sweep(tiny_sweep):
    from lrscope.probe.runner import compute_paths

    compute_paths(tiny_sweep, ["dynamics"], progress=False)
    return tiny_sweep


def test_discover_groups_runs_by_dataset_and_model(sweep):
    from lrscope.viz.app import discover

    groups = discover([sweep])
    assert list(groups) == ["parity / fcn"]
    runs = groups["parity / fcn"]
    assert [(r.lr, r.seed) for r in runs] == [(0.02, 0), (0.02, 1), (0.5, 0), (0.5, 1)]


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
    np.testing.assert_allclose(p, want_p, rtol=1e-6)


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
