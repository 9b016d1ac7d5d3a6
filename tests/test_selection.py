"""The validation split and offline model selection (probe/selection.py): real tiny runs with a
held-out validation split, and each criterion's pick checked by hand on fabricated stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lrscope
from lrscope.probe.metrics import MetricError
from lrscope.probe.runner import compute_paths
from lrscope.probe.selection import NO_BIAS, NO_VAL, NO_VAL_SWEEP, selection_table
from lrscope.store import schema as S
from lrscope.store.writer import RunWriter
from lrscope.train.config import RunConfig
from lrscope.train.data import build_dataset
from lrscope.train.loop import evaluate, train_run

from conftest import tiny_config


# ----------------------------------------------------------------------------------- the split
def test_held_out_split_keeps_rho_and_is_disjoint_and_seeded():
    # Colored MNIST on the digits base (a fixed pool of images: the split is held out of it)
    opts = dict(base="digits", n_train=1000, n_test=200)
    whole = build_dataset("colored_mnist", seed=3, **opts)
    b = build_dataset("colored_mnist", seed=3, val_fraction=0.1, **opts)
    n = len(whole.train)
    assert whole.val is None
    assert len(b.train) + len(b.val) == n and abs(len(b.val) - 0.1 * n) <= 10  # round(f n_g) per group
    # stratified by (y, b): the held-out split has the training split's bias-conflicting share
    assert b.val.bias_conflicting.float().mean().item() == pytest.approx(
        whole.train.bias_conflicting.float().mean().item(), abs=0.02)
    # disjoint, together the pool, each sample's inputs and labels those of the pool
    tr, va = b.train.index.numpy(), b.val.index.numpy()
    pool = whole.train.index.numpy()
    assert not set(tr) & set(va) and sorted([*tr, *va]) == sorted(pool)
    at = {int(i): k for k, i in enumerate(pool)}
    pos = torch.tensor([at[int(i)] for i in va])
    assert torch.equal(b.val.x, whole.train.x[pos]) and torch.equal(b.val.y, whole.train.y[pos])
    assert torch.equal(b.test.x, whole.test.x)  # the test split is untouched
    again = build_dataset("colored_mnist", seed=3, val_fraction=0.1, **opts)
    assert torch.equal(again.val.index, b.val.index)  # a sweep's runs share it (the data seed)
    other = build_dataset("colored_mnist", seed=4, val_fraction=0.1, **opts)
    assert not torch.equal(other.val.index, b.val.index)


def test_synthetic_sets_draw_their_split_and_keep_the_papers_training_size():
    """Parity and moon-star draw their samples: the validation split is a further draw of the training
    distribution (exact rho), the training split the same n_train samples as without one."""
    for name, opts in (("parity", dict(n_train=1000, n_test=200, core_bits=3, spurious_bits=1, noise_bits=6)),
                       ("moon_star", dict(n_train=400, n_test=100, size=16))):
        whole = build_dataset(name, seed=3, **opts)
        b = build_dataset(name, seed=3, val_fraction=0.1, **opts)
        assert torch.equal(b.train.x, whole.train.x) and torch.equal(b.test.x, whole.test.x)
        assert len(b.val) == round(0.1 * opts["n_train"])
        assert b.val.bias_conflicting.float().mean().item() == pytest.approx(0.1)
        assert not torch.equal(b.val.x, whole.train.x[: len(b.val)])  # not the training samples
        again = build_dataset(name, seed=3, val_fraction=0.1, **opts)
        assert torch.equal(again.val.x, b.val.x)  # a sweep's runs share it (the data seed)
        assert not torch.equal(build_dataset(name, seed=4, val_fraction=0.1, **opts).val.x, b.val.x)


def test_old_configs_read_without_a_split_and_keep_their_ids():
    old = tiny_config().to_dict()
    old.pop("val_fraction")  # a store's config written before the field
    assert RunConfig.from_stored(old).val_fraction == 0.0
    assert RunConfig.from_dict(old).val_fraction == 0.1  # a spec without it: today's default
    base = RunConfig(dataset="parity", model="fcn", lr=0.5, seed=0)
    assert base.run_id() == "parity-fcn-lr0.5-s0"
    legacy = RunConfig(dataset="parity", model="fcn", lr=0.5, seed=0, val_fraction=0.0)
    assert legacy.run_id() == "parity-fcn-lr0.5-s0"  # an earlier version's default run keeps its name
    assert RunConfig(dataset="parity", model="fcn", lr=0.5, seed=0, val_fraction=0.2).run_id() != base.run_id()


def test_resuming_an_old_store_with_todays_default_is_refused(tmp_path):
    cfg = tiny_config(max_steps=40)  # val_fraction 0: what an old store holds
    r = train_run(cfg, tmp_path, progress=False)
    assert "val_logits" not in lrscope.open_run(r.path)
    with pytest.raises(lrscope.LrscopeError, match="different config.*val_fraction"):
        train_run(tiny_config(max_steps=40, val_fraction=0.1), tmp_path, run_id=r.path.stem, progress=False)


# ----------------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def val_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("valsweep")
    for lr in (0.02, 0.5):
        train_run(tiny_config(lr=lr, val_fraction=0.1, max_steps=120, stop="max-steps"), out, progress=False)
    compute_paths(out, ["selection", "accuracy"], progress=False)
    return out


def test_runs_record_the_validation_split_at_full_snapshots(val_sweep):
    path = sorted(val_sweep.glob("*.zarr"))[-1]
    ds = lrscope.open_run(path)
    assert (ds.sizes["train_sample"], ds.sizes["val_sample"]) == (400, 40)  # parity draws it: n_train kept
    assert ds.val_logits.dims == ("snapshot", "val_sample", "class")
    assert np.array_equal(ds.val_evaluated.values, ds.test_evaluated.values)  # full snapshots, like the test split
    assert ds.val_logits.attrs["long_name"] == "validation logits" and "description" in ds.val_y.attrs
    # the stored val logits are the final network's on the held-out samples
    cfg = ds.attrs["config"]
    bundle = build_dataset("parity", seed=cfg["data_seed"], val_fraction=cfg["val_fraction"], **cfg["data_options"])
    assert np.array_equal(ds.val_y.values, bundle.val.y.numpy())
    assert np.array_equal(ds.val_index.values, bundle.val.index.numpy())
    net = lrscope.load_model(ds)
    with torch.no_grad():
        want = evaluate(net, bundle.val.x).numpy()
    np.testing.assert_allclose(ds.val_logits.isel(snapshot=-1).values, want, rtol=1e-5, atol=1e-5)


def test_selection_on_a_trained_sweep_matches_the_stored_logits(val_sweep):
    sw = lrscope.open_sweep(val_sweep)
    t = lrscope.selection_table(sw)
    assert list(t.criterion.values) == ["oracle", "val_worst_group", "val_worst_class", "val_average"]
    assert (t.not_defined.values == "").all()
    # the oracle is the maximum of the accuracy probe's test worst-group accuracy over runs and snapshots
    wg = sw.worst_group_accuracy.transpose("run", "snapshot").values
    i, k = np.unravel_index(np.nanargmax(wg), wg.shape)
    o = t.sel(criterion="oracle")
    assert (str(o.selected_run.values), int(o.selected_snapshot)) == (str(sw.run.values[i]), k)
    assert float(o.selected_test_worst_group_accuracy) == pytest.approx(np.nanmax(wg))
    # validation average accuracy, recomputed from the stored val logits
    vl = sw.val_logits.values
    acc = (vl.argmax(-1) == sw.val_y.values).mean(-1)
    acc[~np.isfinite(vl).all((-1, -2))] = np.nan
    a = t.sel(criterion="val_average")
    assert float(a.selection_score) == pytest.approx(np.nanmax(acc))
    assert float(t.gap_to_oracle.sel(criterion="oracle")) == 0 and (t.gap_to_oracle.values <= 1e-12).all()


# ----------------------------------------------------------------------------------- by hand
# test split: 2 samples in each (y, b) group; validation split: groups of 2, 2, 4, 16 samples (class 0
# small, class 1 large, so average and worst-class accuracy pick apart). A snapshot is given by how
# many samples of each group it gets wrong.
TEST_SIZES = (2, 2, 2, 2)
VAL_SIZES = (2, 2, 4, 16)
GROUPS = ((0, 0), (0, 1), (1, 0), (1, 1))


def label_vector(sizes):
    y = np.concatenate([[g[0]] * n for g, n in zip(GROUPS, sizes)]).astype(np.int64)
    b = np.concatenate([[g[1]] * n for g, n in zip(GROUPS, sizes)]).astype(np.int64)
    return y, b


def _logits(sizes, wrong):
    """Logits that get the first wrong[g] samples of each group wrong ("all1": class 1 everywhere)."""
    y, _ = label_vector(sizes)
    if wrong == "all1":
        pred = np.ones_like(y)
    else:
        pred = y.copy()
        start = 0
        for n, w in zip(sizes, wrong):
            pred[start:start + w] = 1 - pred[start:start + w]
            start += n
    return np.where(np.arange(2) == pred[:, None], 1.0, -1.0).astype(np.float32)


def fabricate(path, lr: float, snaps, *, val: bool = True, has_bias: bool = True):
    """A finished run store written through RunWriter, its snapshots' test/val predictions given."""
    ty, tb = label_vector(TEST_SIZES)
    vy, vb = label_vector(VAL_SIZES)
    if not has_bias:
        tb, vb = ty, vy

    def lab(y, b):
        return {"y": y, "b": b, "bias_conflicting": y != b, "group": y * 2 + b, "index": np.arange(len(y))}

    labels = {"train": lab(ty, tb), "test": lab(ty, tb), "probe": lab(ty, tb)}
    if val:
        labels["val"] = lab(vy, vb)
    cfg = tiny_config(lr=lr, max_steps=10).to_dict()
    w = RunWriter.create(path, run_id=path.stem, config=cfg, labels=labels,
                         probe_inputs=np.zeros((8, 3), np.float32), probe_test_index=np.arange(8),
                         regions={}, model_info={"input_shape": [3], "num_classes": 2, "num_bias": 2,
                                                 "num_features": 2},
                         params={"w": np.zeros((2, 3), np.float32)}, batch_size=2, num_classes=2, device="cpu",
                         has_bias=has_bias)
    row = {n: np.zeros(len(snaps), np.int32 if n.endswith("_count") else np.float32) for n in S.LOG_SCALARS}
    row[S.A_BATCH_INDEX] = np.zeros((len(snaps), 2), np.int32)
    row[S.A_BATCH_LOGITS] = np.zeros((len(snaps), 2, 2), np.float16)
    w.append_log(row)
    for it, (test_wrong, val_wrong) in enumerate(snaps):
        tl = _logits(TEST_SIZES, test_wrong)
        w.write_snapshot(it, probe_features=np.zeros((8, 2), np.float32), probe_logits=tl, test_logits=tl,
                         val_logits=_logits(VAL_SIZES, val_wrong) if val else None)
    w.write_checkpoint(len(snaps), {"w": np.zeros((2, 3), np.float32)}, {})
    w.finish(S.STATUS_COMPLETED, "fabricated")
    return path


D = ("all1", "all1")  # degenerate: class 1 everywhere (test: accuracy 0.5, worst group 0)
P_ORACLE = ((0, 0, 0, 0), (2, 2, 4, 16))  # the oracle's: perfect on test, hopeless on validation
P_AVG = ((0, 2, 0, 0), (0, 2, 0, 0))  # val: average 22/24, worst class 2/4, worst group 0
P_WC = ((0, 0, 1, 0), (0, 0, 3, 0))  # val: average 21/24, worst class 17/20, worst group 1/4
P_WG = ((0, 1, 0, 0), (0, 0, 1, 3))  # val: average 20/24, worst class 16/20, worst group 3/4


def test_each_criterion_picks_by_hand(tmp_path):
    fabricate(tmp_path / "fab-a.zarr", 0.01, [D, P_AVG])
    fabricate(tmp_path / "fab-b.zarr", 0.1, [P_ORACLE, P_WC])
    fabricate(tmp_path / "fab-c.zarr", 1.0, [P_WG, D])
    compute_paths(tmp_path, ["selection"], progress=False)
    sw = lrscope.open_sweep(tmp_path)
    assert list(sw.run.values) == ["fab-a", "fab-b", "fab-c"]
    np.testing.assert_allclose(sw.val_average_accuracy.values, [[20 / 24, 22 / 24], [0, 21 / 24],
                                                                [20 / 24, 20 / 24]])
    np.testing.assert_allclose(sw.val_worst_class_accuracy.values, [[0, 0.5], [0, 17 / 20], [16 / 20, 0]])
    np.testing.assert_allclose(sw.val_worst_group_accuracy.values, [[0, 0], [0, 0.25], [0.75, 0]])
    assert sw.predicted_classes.values.tolist() == [[1, 2], [2, 2], [2, 1]]
    t = selection_table(sw)
    want = {  # criterion: (run, snapshot, score, test unbiased, test worst-group, gap)
        "oracle": ("fab-b", 0, 1.0, 1.0, 1.0, 0.0),
        "val_worst_group": ("fab-c", 0, 0.75, 7 / 8, 0.5, -0.5),
        "val_worst_class": ("fab-b", 1, 17 / 20, 7 / 8, 0.5, -0.5),
        "val_average": ("fab-a", 1, 22 / 24, 6 / 8, 0.0, -1.0),
    }
    for crit, (run, snap, score, acc, worst, gap) in want.items():
        r = t.sel(criterion=crit)
        assert (str(r.selected_run.values), int(r.selected_snapshot), int(r.selected_iteration)) == (run, snap, snap)
        assert float(r.selected_lr) == {"fab-a": 0.01, "fab-b": 0.1, "fab-c": 1.0}[run]
        np.testing.assert_allclose([float(r.selection_score), float(r.selected_test_unbiased_accuracy),
                                    float(r.selected_test_worst_group_accuracy), float(r.gap_to_oracle)],
                                   [score, acc, worst, gap])
        assert not bool(r.selected_degenerate) and str(r.not_defined.values) == ""
    assert t.attrs["degenerate_runs"] == "fab-c"  # it ends predicting class 1 everywhere
    assert t.selected_run.attrs["long_name"] == "selected run"


def test_a_degenerate_pick_is_flagged(tmp_path):
    fabricate(tmp_path / "fab-a.zarr", 0.01, [D])
    fabricate(tmp_path / "fab-b.zarr", 0.1, [((2, 0, 0, 2), (0, 2, 0, 0))])  # as bad on test, but not degenerate
    compute_paths(tmp_path, ["selection"], progress=False)
    t = selection_table(lrscope.open_sweep(tmp_path))
    # the oracle's tie (test worst-group 0 everywhere) goes to the first run: the degenerate one
    assert str(t.selected_run.sel(criterion="oracle").values) == "fab-a"
    assert bool(t.selected_degenerate.sel(criterion="oracle"))
    assert str(t.selected_run.sel(criterion="val_average").values) == "fab-b"
    assert not bool(t.selected_degenerate.sel(criterion="val_average"))


def test_runs_without_a_validation_split_give_the_oracle_only(tmp_path):
    fabricate(tmp_path / "fab-a.zarr", 0.01, [D, P_AVG], val=False)
    fabricate(tmp_path / "fab-b.zarr", 0.1, [P_ORACLE, P_WC], val=False)
    compute_paths(tmp_path, ["selection"], progress=False)
    from lrscope.store.reader import read_probe

    assert "val_average_accuracy" not in lrscope.open_run(tmp_path / "fab-a.zarr")

    assert NO_VAL in read_probe(tmp_path / "fab-a.zarr", "selection").attrs["not_defined"]
    t = selection_table(lrscope.open_sweep(tmp_path))
    assert str(t.selected_run.sel(criterion="oracle").values) == "fab-b"
    for crit in ("val_worst_group", "val_worst_class", "val_average"):
        assert str(t.not_defined.sel(criterion=crit).values) == NO_VAL_SWEEP
        assert str(t.selected_run.sel(criterion=crit).values) == "" and np.isnan(t.gap_to_oracle.sel(criterion=crit))


def test_data_without_a_bias_attribute_selects_without_groups(tmp_path):
    fabricate(tmp_path / "fab-a.zarr", 0.01, [D, P_AVG], has_bias=False)
    fabricate(tmp_path / "fab-b.zarr", 0.1, [P_ORACLE, P_WC], has_bias=False)
    compute_paths(tmp_path, ["selection"], progress=False)
    sw = lrscope.open_sweep(tmp_path)
    assert "val_worst_group_accuracy" not in sw and "selection_test_worst_group_accuracy" not in sw
    t = selection_table(sw)
    for crit in ("oracle", "val_worst_group"):
        assert str(t.not_defined.sel(criterion=crit).values) == NO_BIAS
    # without groups, b = y: the validation split's classes are 0 (4 samples) and 1 (20)
    assert str(t.selected_run.sel(criterion="val_average").values) == "fab-a"
    assert str(t.selected_run.sel(criterion="val_worst_class").values) == "fab-b"
    assert np.isnan(t.gap_to_oracle.sel(criterion="val_average"))


def test_selection_table_needs_the_probe(tmp_path):
    fabricate(tmp_path / "fab-a.zarr", 0.01, [P_ORACLE])
    with pytest.raises(MetricError, match="lrprobe compute"):
        selection_table(lrscope.open_sweep(tmp_path))
    with pytest.raises(MetricError, match="open_sweep"):
        selection_table(lrscope.open_run(tmp_path / "fab-a.zarr"))


def test_the_report_shows_the_selection_table(tmp_path, val_sweep):
    from lrscope.viz.report import write_report

    out = write_report(val_sweep, tmp_path / "report.html")
    text = out.read_text()
    assert "Model selection" in text and "validation worst-class accuracy (class labels only" in text
    assert "gap to oracle" in text


def test_lrprobe_compute_prints_the_selection_table(val_sweep):
    from click.testing import CliRunner

    from lrscope.cli.probe import main as lrprobe

    res = CliRunner().invoke(lrprobe, ["compute", str(val_sweep), "--only", "selection", "--quiet"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("model selection, parity / fcn (2 runs"))
    rows = {ln.split()[0]: ln for ln in lines[head + 1:head + 5]}
    assert set(rows) == {"oracle", "val_worst_group", "val_worst_class", "val_average"}
    t = lrscope.selection_table(lrscope.open_sweep(val_sweep))
    for c, ln in rows.items():
        row = t.sel(criterion=c)
        assert f"{row.selected_run.item()} @ iteration {int(row.selected_iteration)}" in ln, ln
        assert f"unbiased {float(row.selected_test_unbiased_accuracy):.3f}" in ln, ln
