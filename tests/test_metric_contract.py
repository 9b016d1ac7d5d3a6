"""One labelled contract for the metrics (see lrscope.probe.metrics): each public metric is a numpy
core plus a labelled wrapper. Checked once over a table of the metrics: the wrapper gives the
core's numbers, transposed inputs give the same result, coordinates of the other dims are kept,
the dims are inferred when unambiguous, and a missing, unknown or ambiguous dim is a MetricError.
The docstring examples run as doctests. (Each formula is checked against an independent
re-implementation in test_metrics.py.)"""

from __future__ import annotations

import doctest
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
import xarray as xr
from xarray.testing import assert_allclose, assert_identical

from lrscope.probe import attribution as A
from lrscope.probe import linear as L
from lrscope.probe import metrics as M
from lrscope.probe import pruning as PR
from lrscope.probe.metrics import MetricError

rng = np.random.default_rng(0)
S, N, D, K = 3, 24, 5, 3
SNAP = {"snapshot": [0, 4, 8], "snapshot_iteration": ("snapshot", [0, 40, 80])}  # an index and an aux coord
ACTS = xr.DataArray(np.maximum(rng.standard_normal((S, N, D)), 0), dims=["snapshot", "probe_sample", "neuron"],
                    coords=SNAP)
LOGITS = xr.DataArray(rng.standard_normal((S, N, K)), dims=["snapshot", "train_sample", "class"], coords=SNAP)
Y = np.arange(N) % K
B = (np.arange(N) // K) % 2
BC = Y != B
SUMS = [xr.DataArray(rng.random((S, 10)), dims=["snapshot", "iteration"], coords=SNAP) for _ in range(2)]
CSI = xr.DataArray(rng.random((2, S, D)), dims=["run", "snapshot", "neuron"], coords=SNAP)
BSI = CSI.copy(data=rng.random((2, S, D)))
W = xr.DataArray(rng.random((S, N)), dims=["snapshot", "train_sample"], coords=SNAP)
CURVE = xr.DataArray(rng.random((2, 5)), dims=["run", "kappa"], coords={"kappa": [0.0, 0.1, 0.2, 0.3, 0.4],
                                                                       "lr": ("run", [0.01, 0.5])})
ATTR = xr.DataArray(rng.standard_normal((N, 2, 4)), dims=["attr_sample", "input_0", "input_1"],
                    coords={"input_1": [10, 11, 12, 13]})
REGIONS = xr.DataArray(rng.random((3, 2, 4)) < 0.5, dims=["region", "input_0", "input_1"],
                       coords={"region": ["core", "spurious", "noise"], "input_1": [10, 11, 12, 13]})
MASKS = xr.DataArray(rng.random((N, 4)) < 0.5, dims=["attr_sample", "input_1"], coords={"input_1": [10, 11, 12, 13]})


@dataclass
class Case:
    """A metric in the contract table. `call(*arrays, **dims)` runs the wrapper; `core(*arrays)`
    the numpy core on the arrays laid out as `layout` says; `values(result)` gives the arrays the
    core returns, read off the wrapper's result, to compare."""

    call: Callable
    core: Callable
    arrays: tuple
    dims: dict  # the dims keywords (role_dim -> the dim) with the names the arrays use
    layout: tuple  # each array's dims in the core's order
    values: Callable = lambda r: [r.values]
    keeps: tuple = ("snapshot", "snapshot_iteration")  # coordinates the result must keep
    core_out: Callable = lambda c: [c]


def _acc_values(r):
    return [r.unbiased_accuracy.values, r.group_accuracy.transpose(..., "group").values, r.worst_group_accuracy.values,
            r.bc_accuracy.values, r.ba_accuracy.values]


def _acc_core(c):
    return [c["unbiased_accuracy"], c["group_accuracy"], c["worst_group_accuracy"], c["bc_accuracy"], c["ba_accuracy"]]


SD, FD, CD = "probe_sample", "neuron", "class"
ACT_LAYOUT = (("snapshot", SD, FD),)
LOGIT_LAYOUT = (("snapshot", "train_sample", CD),)
CASES = {
    "group_accuracy": Case(lambda x, **d: M.group_accuracy(x, Y, B, **d), lambda a: M.group_accuracy_np(a, Y, B),
                           (LOGITS,), {"sample_dim": "train_sample", "class_dim": CD}, LOGIT_LAYOUT,
                           values=_acc_values, core_out=_acc_core),
    "loss_ratio": Case(M.loss_ratio, M.loss_ratio_np, tuple(SUMS), {}, (("snapshot", "iteration"),) * 2),
    "per_sample_ce": Case(lambda x, **d: M.per_sample_ce(x, Y, **d), lambda a: M.per_sample_ce_np(a, Y),
                          (LOGITS,), {"sample_dim": "train_sample", "class_dim": CD}, LOGIT_LAYOUT),
    "ba_bc_loss_ratio": Case(lambda x, **d: M.ba_bc_loss_ratio(x, Y, BC, **d),
                             lambda a: M.ba_bc_loss_ratio_np(a, Y, BC), (LOGITS,),
                             {"sample_dim": "train_sample", "class_dim": CD}, LOGIT_LAYOUT),
    "importance_weights": Case(lambda x, **d: M.importance_weights(x, Y, **d), lambda a: M.importance_weights_np(a, Y),
                               (LOGITS,), {"sample_dim": "train_sample", "class_dim": CD}, LOGIT_LAYOUT),
    "compressibility": Case(lambda x, **d: M.compressibility(x, kappa=0.4, **d),
                            lambda a: M.compressibility_np(a, kappa=0.4), (ACTS,), {"feature_dim": FD}, ACT_LAYOUT),
    "sparsity": Case(M.sparsity, M.sparsity_np, (ACTS,), {"feature_dim": FD}, ACT_LAYOUT),
    "pq_index": Case(M.pq_index, M.pq_index_np, (ACTS,), {"feature_dim": FD}, ACT_LAYOUT),
    "class_separation": Case(lambda x, **d: M.class_separation(x, Y, **d), lambda a: M.class_separation_np(a, Y),
                             (ACTS,), {"sample_dim": SD, "feature_dim": FD}, ACT_LAYOUT),
    "selectivity": Case(lambda x, **d: M.selectivity(x, Y, **d), lambda a: M.selectivity_np(a, Y),
                        (ACTS,), {"sample_dim": SD, "feature_dim": FD}, ACT_LAYOUT),
    "class_selectivity": Case(lambda x, **d: M.class_selectivity(x, Y, **d), lambda a: M.selectivity_np(a, Y),
                              (ACTS,), {"sample_dim": SD, "feature_dim": FD}, ACT_LAYOUT),
    "bias_selectivity": Case(lambda x, **d: M.bias_selectivity(x, B, **d), lambda a: M.selectivity_np(a, B),
                             (ACTS,), {"sample_dim": SD, "feature_dim": FD}, ACT_LAYOUT),
    "neuron_survival": Case(M.neuron_survival, M.neuron_survival_np, (CSI, BSI),
                            {"time_dim": "snapshot", "feature_dim": FD}, (("run", "snapshot", FD),) * 2,
                            values=lambda r: [r.class_dominant_fraction.values, r.class_neuron_survival.values,
                                              r.bias_neuron_survival.values], core_out=list),
    "lorenz_curve": Case(lambda x, **d: M.lorenz_curve(x, points=7, **d), lambda a: M.lorenz_curve_np(a, points=7),
                         (W,), {"sample_dim": "train_sample"}, (("snapshot", "train_sample"),)),
    "gini": Case(M.gini, M.gini_np, (W,), {"sample_dim": "train_sample"}, (("snapshot", "train_sample"),)),
    "feature_probe": Case(lambda x, **d: L.feature_probe(x, Y % 2, B, **d), lambda a: L.feature_probe_np(a, Y % 2, B),
                          (ACTS,), {"sample_dim": SD, "feature_dim": FD}, ACT_LAYOUT,
                          values=lambda r: [r.core_probe_error.values, r.spurious_probe_error.values], core_out=list),
    "prunability": Case(PR.prunability, lambda a: PR.prunability_np(a, CURVE.kappa.values), (CURVE,),
                        {"kappa_dim": "kappa"}, (("run", "kappa"),), keeps=("lr",)),
    "prunability_sum": Case(PR.prunability_sum, lambda a: PR.prunability_sum_np(a, CURVE.kappa.values), (CURVE,),
                            {"kappa_dim": "kappa"}, (("run", "kappa"),), keeps=("lr",)),
    "pruned_accuracy": Case(PR.pruned_accuracy, PR.pruned_accuracy_np, (CURVE,), {"kappa_dim": "kappa"},
                            (("run", "kappa"),), keeps=("lr",)),
    "region_shares": Case(A.region_shares, A.region_shares_np, (ATTR, REGIONS), {"sample_dim": "attr_sample"},
                          (("attr_sample", "input_0", "input_1"), ("input_0", "input_1", "region")), keeps=("region",)),
    "attribution_entropy": Case(A.attribution_entropy, A.attribution_entropy_np, (ATTR,), {"sample_dim": "attr_sample"},
                                (("attr_sample", "input_0", "input_1"),), keeps=()),
    "background_share": Case(A.background_share, lambda a, m: A.background_share_np(a, m[:, None, :]), (ATTR, MASKS),
                             {"sample_dim": "attr_sample"}, (("attr_sample", "input_0", "input_1"),
                                                            ("attr_sample", "input_1")), keeps=()),
}
TABLE = [pytest.param(c, id=name) for name, c in CASES.items()]
WITH_DIMS = [pytest.param(c, id=name) for name, c in CASES.items() if c.dims]


def _norm(obj):
    """Every variable with its dims in sorted order (results of transposed inputs compare equal)."""
    return obj.transpose(*sorted(obj.dims))


def test_every_public_metric_is_in_the_table():
    """probe's exported array metrics are all here (last_mistake takes the store's positional arrays;
    pruning_curve, attributions and the sweep/dynamics/importance analyses take a model, a Dataset or the
    log)."""
    from lrscope import probe

    not_array_metrics = {"last_mistake", "pruning_curve", "attributions", "captum_ready", "fit_logistic", "dynamics",
                         "sample_dynamics", "lr_sensitive_samples", "loss_ratio_correlation", "last_snapshot",
                         "importance_trajectory", "epoch_importance", "model_soup", "soup_state", "MetricError",
                         "selection_table"}
    assert set(probe.__all__) - not_array_metrics - {"per_sample_ce"} <= set(CASES)


@pytest.mark.parametrize("case", TABLE)
def test_core_equals_wrapper(case):
    res = case.call(*case.arrays, **case.dims)
    core = case.core_out(case.core(*[a.transpose(*lay).values for a, lay in zip(case.arrays, case.layout)]))
    got = case.values(res)
    assert len(got) == len(core)
    for g, c in zip(got, core):
        np.testing.assert_array_equal(g, c)
    for v in ([res] if isinstance(res, xr.DataArray) else res.data_vars.values()):
        assert "long_name" in v.attrs


@pytest.mark.parametrize("case", TABLE)
def test_transposed_inputs_give_the_same_result(case):
    res = case.call(*case.arrays, **case.dims)
    flipped = case.call(*[a.transpose(*reversed(a.dims)) for a in case.arrays], **case.dims)
    assert_allclose(_norm(flipped), _norm(res), rtol=1e-12)


@pytest.mark.parametrize("case", TABLE)
def test_coordinates_are_kept(case):
    res = case.call(*case.arrays, **case.dims)
    for name in case.keeps:
        src = next(a.coords[name] for a in case.arrays if name in a.coords)
        assert name in res.coords, name
        assert_identical(res.coords[name].variable, src.variable)


@pytest.mark.parametrize("case", WITH_DIMS)
def test_dims_are_inferred_when_unambiguous(case):
    assert_identical(case.call(*case.arrays), case.call(*case.arrays, **case.dims))


@pytest.mark.parametrize("case", WITH_DIMS)
def test_missing_or_unknown_dim_is_a_metric_error(case):
    for key, dim in case.dims.items():
        with pytest.raises(MetricError, match=key):  # a name the input does not have
            case.call(*case.arrays, **{**case.dims, key: "nope"})
        # a dim under a name lrscope does not use, beside others: nothing to infer it from
        renamed = [a.rename({dim: "zz"}) if dim in a.dims else a for a in case.arrays]
        with pytest.raises(MetricError, match="cannot tell"):
            case.call(*renamed)
        assert case.call(*renamed, **{**case.dims, key: "zz"}) is not None  # named, it works


def test_ambiguous_dims_and_label_hints():
    two = ACTS.rename(snapshot="other_sample")
    with pytest.raises(MetricError, match="ambiguous"):
        M.class_separation(two, Y)
    # labels along a dim say which one is the sample dim
    hinted = M.class_separation(two, xr.DataArray(Y, dims=["probe_sample"]))
    assert_identical(hinted, M.class_separation(two, Y, sample_dim="probe_sample"))
    # ... and must lie along it, one per sample
    with pytest.raises(MetricError, match="lie along"):
        M.class_separation(ACTS, xr.DataArray(Y, dims=["other"]), sample_dim="probe_sample")
    with pytest.raises(MetricError, match="one value per sample"):
        M.class_selectivity(ACTS, Y[:-1])
    with pytest.raises(MetricError, match="two roles"):
        M.class_separation(ACTS, Y, sample_dim="neuron", feature_dim="neuron")


def test_plain_arrays_and_no_dim_keyword():
    a = ACTS.isel(snapshot=0).values  # (sample, feature) by position
    np.testing.assert_array_equal(M.class_separation(a, Y).values, M.class_separation_np(a, Y))
    np.testing.assert_array_equal(M.compressibility(a).values, M.compressibility_np(a))
    for fn in (M.compressibility, M.sparsity, M.pq_index, M.gini, M.lorenz_curve, PR.prunability):
        with pytest.raises(TypeError):  # the old dim= keyword is gone: the role's name says which dim
            fn(ACTS, dim="x")


def test_lazy_logits_stay_lazy_and_agree():
    lazy = LOGITS.chunk({"snapshot": 1})
    for fn in (lambda x: M.group_accuracy(x, Y, B).unbiased_accuracy, lambda x: M.ba_bc_loss_ratio(x, Y, BC),
               lambda x: M.importance_weights(x, Y), lambda x: M.per_sample_ce(x, Y)):
        out = fn(lazy)
        assert out.chunks is not None
        assert_identical(out.compute(), fn(LOGITS))


def test_lorenz_points_and_labels_out_of_range():
    for bad in (0, 1, 2.5, True):
        with pytest.raises(MetricError, match="points"):
            M.lorenz_curve(W, points=bad)
    with pytest.raises(MetricError, match="labels must lie"):
        M.importance_weights(LOGITS, Y + 1)


def test_attributions_are_labelled():
    from lrscope.train.nets import FCN

    torch.manual_seed(0)
    net = FCN(8, [6], 3).eval()
    x = torch.randn(5, 8)
    t = torch.tensor([0, 1, 2, 0, 1])
    core = A.attributions_torch(net, x, t, n_steps=16).numpy()
    a = A.attributions(net, x, t, n_steps=16, sample_dim="attr_sample")
    assert a.dims == ("attr_sample", "input_0")
    np.testing.assert_array_equal(a.values, core)
    # a DataArray of inputs labels the maps with its dims and coords
    xin = xr.DataArray(x.numpy(), dims=["probe_sample", "pixel"], coords={"pixel": np.arange(8) * 2})
    b = A.attributions(net, xin, t.numpy(), n_steps=16)
    assert b.dims == ("probe_sample", "pixel") and (b.pixel.values == np.arange(8) * 2).all()
    np.testing.assert_array_equal(b.values, core)


@pytest.mark.parametrize("module", [M, A, L, PR], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_docstring_examples(module):
    """The Examples sections run as doctests (small and deterministic)."""
    res = doctest.testmod(module, extraglobs={"np": np, "xr": xr}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0
    assert res.attempted > 0
