"""The minibatch record's policy (log_logits = auto | full | summary, issue #20) and the importance
weights through training (issue #19), on real runs: the policy resolves by the number of classes
and is recorded in the store; a summary run and a full run of the same training give the same
dynamics, importance and loss-ratio results; a summary run resumes bit for bit; a store written
before the policy existed still opens, probes and resumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import zarr

import lrscope
from lrscope.errors import ConfigError, RunInterrupted, StoreError
from lrscope.probe.importance import importance_trajectory, lorenz_epochs
from lrscope.probe.metrics import gini_np, importance_weights_np, lorenz_curve_np
from lrscope.probe.runner import compute_run
from lrscope.store import schema as S
from lrscope.store.reader import read_probe
from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run
from lrscope.train.recipes import DataBundle, Split

PROBES = ["dynamics", "importance", "loss_ratio"]


def small(**kw) -> RunConfig:
    base = {"dataset": "parity", "model": "fcn", "widths": [16], "lr": 0.2, "max_steps": 160, "stop": "max-steps",
            "probe_size": 40, "batch_size": 50, "snapshot_every": 40, "checkpoint_every": 40,
            "data_options": {"n_train": 400, "n_test": 200}, "val_fraction": 0.0}  # all 400 train: 8 whole batches
    base.update(kw)
    return RunConfig(**base)


def gaussian_bundle(n_classes: int, n_train: int = 400, n_test: int = 200, dim: int = 12, seed: int = 0,
                    rho: float = 0.1) -> DataBundle:
    """Gaussian clusters, one per class, with a bias label that is another class on a fraction
    `rho` of the samples (bias-conflicting): a many-class dataset small enough to train here."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * 1.5

    def split(n, offset):
        y = rng.permutation(np.arange(n) % n_classes)
        x = (centers[y] + rng.normal(size=(n, dim))).astype(np.float32)
        bc = rng.random(n) < rho
        b = np.where(bc, (y + rng.integers(1, n_classes, n)) % n_classes, y)
        return Split.from_numpy(x, y, b, np.arange(n) + offset)

    return DataBundle("gaussian", split(n_train, 0), split(n_test, n_train), n_classes, n_classes, (dim,))


def _store(path) -> zarr.Group:
    return zarr.open_group(str(path), mode="r")


# ------------------------------------------------------------------------------ the policy
def test_policy_resolves_by_class_count_and_is_recorded(tmp_path):
    for c in (1, 2, 10, S.FULL_LOGITS_MAX_CLASSES):
        assert S.resolve_log_logits("auto", c) == "full", c
    for c in (S.FULL_LOGITS_MAX_CLASSES + 1, 100, 1000):
        assert S.resolve_log_logits("auto", c) == "summary", c
    for c in (2, 1000):
        assert S.resolve_log_logits("full", c) == "full" and S.resolve_log_logits("summary", c) == "summary"
    with pytest.raises(ValueError):
        S.resolve_log_logits("some", 10)
    with pytest.raises(ConfigError, match="log_logits"):
        small(log_logits="compressed").validate()
    # the default leaves run ids as they were; another policy is another run
    assert RunConfig(lr=0.3, widths=[8]).run_id() == "parity-fcn-lr0.3-s0-89dcdcb7"
    assert RunConfig().run_id() == "parity-fcn-lr0.1-s0"
    assert RunConfig(log_logits="summary").run_id() != RunConfig().run_id()
    assert RunConfig(log_logits="full").run_id() != RunConfig(log_logits="summary").run_id()

    # auto on 2 classes: full logits, schema 2 (an older lrscope reads it); on 20: the summary, schema 3
    cfg = small(max_steps=8, snapshot_every=4, checkpoint_every=4)
    two = train_run(cfg, tmp_path / "two", progress=False).path
    twenty = train_run(cfg, tmp_path / "twenty", progress=False, data=gaussian_bundle(20)).path
    a, b = _store(two).attrs.asdict(), _store(twenty).attrs.asdict()
    assert (a["log_logits"], a["schema_version"], a["config"]["log_logits"]) == ("full", 2, "auto")
    assert (b["log_logits"], b["schema_version"], b["config"]["log_logits"]) == ("summary", 3, "auto")
    assert "batch_logits" in _store(two)["log"] and "batch_logits" not in _store(twenty)["log"]
    ds = lrscope.open_run(twenty)
    assert ds.attrs["log_logits"] == "summary"
    for name, (dtype, _) in S.SUMMARY_ARRAYS.items():
        assert ds[name].dims == ("iteration", "batch_slot") and ds[name].dtype == np.dtype(dtype), name
        assert ds[name].attrs["description"], name
    assert lrscope.open_run(two).attrs["log_logits"] == "full"


def test_summary_record_is_what_the_log_statistics_saw(tmp_path):
    """Each summary value against its definition on the same training logits: the full record of
    the same run (float16) and the log's own per-step statistics (from the float32 logits)."""
    full = train_run(small(log_logits="full"), tmp_path / "f", progress=False).path
    summ = train_run(small(log_logits="summary"), tmp_path / "s", progress=False).path
    f, s = lrscope.open_run(full, probes=False), lrscope.open_run(summ, probes=False)
    for v in ("loss", "accuracy", "bc_loss_sum", "ba_loss_sum", "grad_norm", "param_norm", "batch_index",
              "test_logits", "train_logits"):
        np.testing.assert_array_equal(f[v].values, s[v].values, err_msg=v)  # the same training, bit for bit
    idx = s.batch_index.values
    valid = idx >= 0
    y = s.train_y.values[np.where(valid, idx, 0)]
    z = f.batch_logits.values.astype(np.float64)
    m = z.max(-1, keepdims=True)
    logp = np.take_along_axis(z - m - np.log(np.exp(z - m).sum(-1, keepdims=True)), y[..., None], -1)[..., 0]
    zy = np.take_along_axis(z, y[..., None], -1)[..., 0]
    other = np.where(np.arange(z.shape[-1]) == y[..., None], -np.inf, z).max(-1)
    tol = 2e-3 * (1 + np.abs(z).max())  # the full record is float16
    np.testing.assert_allclose(s.batch_true_logprob.values[valid], logp[valid], atol=tol)
    np.testing.assert_allclose(s.batch_true_logit.values[valid], zy[valid], atol=tol)
    np.testing.assert_allclose(s.batch_margin.values[valid], (zy - other)[valid], atol=2 * tol)
    loss = s.batch_loss.values
    np.testing.assert_allclose(loss[valid], -s.batch_true_logprob.values[valid], rtol=1e-6, atol=1e-7)  # CE
    bc = s.train_bias_conflicting.values[np.where(valid, idx, 0)] & valid
    np.testing.assert_allclose(np.where(bc, loss, 0).sum(1), s.bc_loss_sum.values, rtol=1e-5)
    cnt = valid.sum(1)
    np.testing.assert_allclose(s.batch_correct.values.sum(1) / cnt, s.accuracy.values, rtol=1e-6)
    assert not s.batch_correct.values[~valid].any() and np.isnan(loss[~valid]).all()
    # the learning-order metric reads either record
    from lrscope.probe import last_mistake

    n = s.sizes["train_sample"]
    a = last_mistake(idx, f.batch_logits.values, s.train_y.values, n_samples=n).values
    b = last_mistake(idx, s.batch_correct.values, s.train_y.values, n_samples=n).values
    assert (a == b).mean() >= 0.99 and (a >= 0).any()


# ------------------------------------------------------------------------------ same results
@pytest.mark.parametrize("classes", [2, 20])
def test_summary_and_full_runs_give_the_same_probe_results(tmp_path, classes):
    """The same training recorded both ways: every dynamics, importance and loss-ratio result
    agrees to the full record's float16 (correctness-based counts may differ where float16
    rounding ties two logits; at most a few samples)."""
    data = gaussian_bundle(classes) if classes > 2 else None
    res = {}
    for pol in ("full", "summary"):
        path = train_run(small(log_logits=pol, lr=0.5), tmp_path / pol, progress=False, data=data).path
        assert lrscope.open_run(path, probes=False).attrs["log_logits"] == pol
        out = compute_run(path, PROBES)
        assert all(o.startswith("computed") for o in out.values()), out
        res[pol] = {n: read_probe(path, n) for n in PROBES}
    a, b = res["full"], res["summary"]
    for n in PROBES:
        assert set(a[n].data_vars) == set(b[n].data_vars), n
        for v in a[n].data_vars:
            x, y = a[n][v].values, b[n][v].values
            assert x.shape == y.shape, v
            if n == "loss_ratio" or v in ("importance_gini", "importance_lorenz", "lorenz_snapshot",
                                          "importance_lorenz_epoch", "importance_epoch_samples",
                                          "dyn_presentations", "dyn_predictions", "dyn_epoch_first_iteration"):
                np.testing.assert_array_equal(x, y, err_msg=v)  # not read from the record
            elif x.dtype.kind == "f" and v.startswith(("importance", "dyn_confidence", "dyn_variability",
                                                       "dyn_epoch_confidence", "dyn_subset_confidence",
                                                       "dyn_group_confidence", "dyn_subset_variability",
                                                       "dyn_group_variability")):
                np.testing.assert_allclose(x, y, atol=2e-3, rtol=0, equal_nan=True, err_msg=v)
            else:  # from correctness: equal but for float16 ties
                differ = ~((x == y) | (np.isnan(x) & np.isnan(y)) if x.dtype.kind == "f" else x == y)
                assert differ.mean() <= 0.01, (v, differ.sum())
    imp = b["importance"]
    assert imp.importance_epoch_gini.sizes["epoch"] == math.ceil(160 / 8)  # 400 samples, batches of 50
    assert np.isfinite(imp.importance_epoch_gini.values).all()
    assert (imp.importance_epoch_samples.sel(subset="all") == 400).all()


# ------------------------------------------------------------------------------ importance
def test_importance_trajectory_against_brute_force(tmp_path):
    """Per epoch: the Gini, BC share and Lorenz curves of 1 - p(y|x) at each sample's presentation,
    against numpy on the log rows of that epoch, and against the snapshot train logits' values
    taken the same way (its own definition: metrics.gini / lorenz_curve)."""
    path = train_run(small(), tmp_path, progress=False).path
    assert compute_run(path, ["importance"])["importance"].startswith("computed")
    r = read_probe(path, "importance")
    ds = lrscope.open_run(path, probes=False)
    idx, z, y = ds.batch_index.values, ds.batch_logits.values, ds.train_y.values
    bc = ds.train_bias_conflicting.values
    spe = 8
    n_ep = idx.shape[0] // spe
    assert r.sizes["epoch"] == n_ep == 20
    for e in range(n_ep):
        w = np.full(len(y), np.nan)
        for t in range(e * spe, (e + 1) * spe):
            for k in range(idx.shape[1]):
                s = idx[t, k]
                if s >= 0:
                    w[s] = importance_weights_np(z[t, k].astype(np.float64), y[s])
        assert np.isfinite(w).all()
        np.testing.assert_allclose(r.importance_epoch_gini.sel(epoch=e, subset="all"), gini_np(w), rtol=1e-9)
        np.testing.assert_allclose(r.importance_epoch_gini.sel(epoch=e, subset="bias_conflicting"), gini_np(w[bc]),
                                   rtol=1e-9)
        np.testing.assert_allclose(r.importance_epoch_bc_share.sel(epoch=e), w[bc].sum() / w.sum(), rtol=1e-9)
        if e in r.importance_lorenz_epoch.values:
            at = int(np.flatnonzero(r.importance_lorenz_epoch.values == e)[0])
            np.testing.assert_allclose(r.importance_epoch_lorenz.isel(lorenz_epoch_at=at), lorenz_curve_np(w),
                                       rtol=1e-9)
    assert list(r.importance_lorenz_epoch.values) == list(lorenz_epochs(160, 8)) == [0, 1, 2, 5, 10, 19]
    # the snapshot-based values stay, each labelled with where it comes from
    assert "snapshot train logits" in r.importance_gini.attrs["long_name"]
    assert np.isfinite(r.importance_gini.isel(snapshot=-1))
    ds2 = lrscope.open_run(path)
    assert "minibatch log" in ds2.importance_epoch_gini.attrs["description"]


def test_importance_of_a_hand_made_log():
    """Repeated samples keep their last presentation in the epoch; no prediction keeps the earlier
    one; a partial last epoch counts what it saw; summary and logits agree."""
    index = np.array([[0, 1], [1, 2], [0, -1], [2, 1]])
    y = np.array([1, 0, 1])
    logits = np.array([[[0, 2], [1, 0]], [[0, 1], [np.nan, 0]], [[0, 3], [0, 0]], [[0, 0], [5, 0]]],
                      dtype=np.float16)

    def w(z, yy):
        return float(importance_weights_np(np.asarray(z, np.float64), yy))

    r = importance_trajectory(index, y, 3, steps_per_epoch=3, batch_logits=logits, bias_conflicting=[0, 0, 1])
    # epoch 0: sample 0 at row 2 (3 ≠ 2: the last), sample 1 at row 1, sample 2 none (NaN logits)
    w0 = np.array([w([0, 3], 1), w([0, 1], 0)])
    np.testing.assert_allclose(r["gini"][0], [gini_np(w0), gini_np(w0), np.nan])
    np.testing.assert_array_equal(r["samples"], [[2, 2, 0], [2, 1, 1]])
    w1 = np.array([w([0, 0], 1), w([5, 0], 0)])
    np.testing.assert_allclose(r["gini"][1, 0], gini_np(w1))
    np.testing.assert_allclose(r["bc_share"], [0.0, w1[0] / w1.sum()])
    lp = np.log1p(-np.array([[w([0, 2], 1), w([1, 0], 0)], [w([0, 1], 0), np.nan], [w([0, 3], 1), np.nan],
                            [w([0, 0], 1), w([5, 0], 0)]]))
    lp[1, 1] = np.nan
    r2 = importance_trajectory(index, y, 3, steps_per_epoch=3, batch_true_logprob=lp.astype(np.float32),
                               bias_conflicting=[0, 0, 1])
    for k in ("gini", "bc_share", "lorenz"):
        np.testing.assert_allclose(r2[k], r[k], rtol=1e-6, err_msg=k)


# ------------------------------------------------------------------------------ resume, old stores
def _interrupt_after_first_checkpoint(monkeypatch):
    from test_interrupted_runs import interrupt_after_first_checkpoint

    return interrupt_after_first_checkpoint(monkeypatch)


def _arrays(path) -> dict[str, np.ndarray]:
    root = _store(path)
    return {name: np.asarray(a[...]) for name, a in root.members(max_depth=None)
            if isinstance(a, zarr.Array) and not name.startswith("probes")}


@pytest.mark.parametrize("data", [None, "gaussian20"])
def test_summary_run_resumes_bitwise(tmp_path, monkeypatch, data):
    bundle = gaussian_bundle(20) if data else None
    cfg = small(log_logits="summary" if data is None else "auto", deterministic=True)
    ref = train_run(cfg, tmp_path / "ref", progress=False, data=bundle)
    fired = _interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(RunInterrupted):
        train_run(cfg, tmp_path / "cut", progress=False, data=bundle)
    assert fired
    monkeypatch.undo()
    r = train_run(cfg, tmp_path / "cut", progress=False, data=bundle)
    assert r.status == "completed" and r.resumed_from
    a, b = _arrays(ref.path), _arrays(r.path)
    assert a.keys() == b.keys() and "log/batch_true_logprob" in a and "log/batch_logits" not in a
    for k in a:
        if k.startswith(("log/", "snapshots/", "checkpoints/")):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _make_old(path) -> None:
    """Rewrite a full store's root attributes as lrscope wrote them before the policy existed:
    no log_logits attribute, no log_logits in the config, schema 2."""
    meta = json.loads((path / "zarr.json").read_text())
    attrs = meta["attributes"]
    attrs.pop("log_logits")
    attrs["config"].pop("log_logits")
    assert attrs["schema_version"] == 2
    (path / "zarr.json").write_text(json.dumps(meta))


def test_store_from_before_the_policy_probes_and_resumes(tmp_path, monkeypatch):
    cfg = small()  # auto: full on parity
    ref = train_run(cfg, tmp_path / "ref", progress=False).path
    assert compute_run(ref, PROBES)
    _interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(RunInterrupted):
        train_run(cfg, tmp_path / "old", progress=False)
    monkeypatch.undo()
    old = next((tmp_path / "old").glob("*.zarr"))
    assert old.name == ref.name
    _make_old(old)
    r = train_run(cfg, tmp_path / "old", progress=False)  # the same run id, the same identity: resumed
    assert r.status == "completed" and r.resumed_from
    attrs = _store(old).attrs.asdict()
    assert "log_logits" not in attrs and "batch_logits" in _store(old)["log"]
    out = compute_run(old, PROBES)
    assert all(o.startswith("computed") for o in out.values()), out
    ds = lrscope.open_run(old)
    assert ds.attrs["log_logits"] == "full"
    want = lrscope.open_run(ref)
    for v in ("dyn_confidence", "dyn_forgetting_events", "importance_epoch_gini", "importance_gini", "loss_ratio"):
        np.testing.assert_allclose(ds[v].values, want[v].values, rtol=1e-12, equal_nan=True, err_msg=v)
    sw = lrscope.open_sweep([ref, old])  # old and new stores side by side
    assert sw.sizes["run"] == 2


def test_a_summary_attribute_that_lies_is_refused(tmp_path):
    path = train_run(small(max_steps=8, snapshot_every=4, checkpoint_every=4), tmp_path, progress=False).path
    meta = json.loads((path / "zarr.json").read_text())
    for bad in ("summary", "none", 3):  # summary in a schema-2 store; not a policy
        meta["attributes"]["log_logits"] = bad
        (path / "zarr.json").write_text(json.dumps(meta))
        with pytest.raises(StoreError, match="log_logits"):
            lrscope.open_run(path)


def test_explorer_reads_the_summary_record(tmp_path):
    from lrscope.viz.app import discover, sample_trajectory

    path = train_run(small(log_logits="summary"), tmp_path, progress=False).path
    run = discover([tmp_path])["parity / fcn"][0]
    ds = lrscope.open_run(path, probes=False)
    idx, lp = ds.batch_index.values, ds.batch_true_logprob.values
    it, p = sample_trajectory(run, 7)
    t, k = np.nonzero(idx == 7)
    np.testing.assert_array_equal(it, t)
    np.testing.assert_allclose(p, np.exp(lp[t, k].astype(np.float64)))


def test_report_figure_draws_the_trajectory(tmp_path):
    """The report's importance figure: the Gini per epoch (one curve per LR), the Lorenz curves at
    the first and the last complete epoch, the bias-conflicting share; a sweep probed before the
    per-epoch values (no importance_epoch_*) falls back to the snapshot Lorenz curves."""
    import holoviews as hv

    from lrscope.viz import figures as F

    for lr in (0.05, 0.5):
        path = train_run(small(lr=lr), tmp_path, progress=False).path
        compute_run(path, ["importance"])
    sw = lrscope.open_sweep(tmp_path)
    fig = F.FIGURES["importance"](sw)
    assert isinstance(fig, hv.Layout) and len(fig) == 3
    gini, lorenz, share = fig
    assert [c.label for c in gini] == ["lr=0.05", "lr=0.5"]
    g = sw.importance_epoch_gini.sel(subset="all").isel(run=0).values
    np.testing.assert_allclose(list(gini)[0].dimension_values(1), g)
    assert len(lorenz) == 1 + 2 * 2  # the diagonal, first and last epoch per LR
    assert len(share) == 2
    hv.render(fig, backend="bokeh")
    old = sw.drop_vars([v for v in sw.data_vars if v.startswith("importance_epoch")])
    assert list(list(F.importance_trajectories(old))[0])[0].label == "uniform"


def test_the_summary_does_not_grow_with_the_classes(tmp_path):
    """Raw bytes of the log per step: the summary's are the same at 20 and 200 classes (4 B of
    sample id + 13 B of record per slot, + the 10 scalars), the full record's grow by 2 B a class."""
    def raw_per_step(c, pol):
        cfg = small(log_logits=pol, max_steps=16, snapshot_every=16, checkpoint_every=16, batch_size=50)
        path = train_run(cfg, tmp_path / f"{c}-{pol}", progress=False, data=gaussian_bundle(c, n_train=800)).path
        log = _store(path)["log"]
        assert all(a.shape[0] == 16 for _, a in log.arrays())
        return sum(int(np.prod(a.shape)) * a.dtype.itemsize for _, a in log.arrays()) / 16

    scalars = len(S.LOG_SCALARS) * 4  # float32 and int32 scalars
    for c in (20, 200):
        assert raw_per_step(c, "summary") == scalars + 50 * (4 + 13)
        assert raw_per_step(c, "full") == scalars + 50 * (4 + 2 * c)
