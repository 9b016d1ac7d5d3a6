"""Each metric against a brute-force or hand-computed reference, plus property tests."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lrscope import probe
from lrscope.probe.metrics import MetricError

fin = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def acts_da(a):
    return xr.DataArray(np.asarray(a, dtype=np.float64), dims=["s", "n"])


# ----------------------------------------------------------------------------- compressibility
def brute_compressibility(z, q, kappa):
    d = len(z)
    k = math.ceil(kappa * d)
    order = np.argsort(-np.abs(z), kind="stable")
    zk = np.zeros_like(z)
    zk[order[:k]] = z[order[:k]]
    nz = np.linalg.norm(z, q)
    return 1.0 if nz == 0 else 1 - np.linalg.norm(z - zk, q) / nz


@pytest.mark.parametrize("q,kappa", [(2, 0.1), (1, 0.3), (2, 0.0), (2, 1.0), (3, 0.5)])
def test_compressibility_matches_brute_force(q, kappa):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 23)) * rng.integers(0, 2, (7, 23))
    got = probe.compressibility(xr.DataArray(x, dims=["s", "n"]), feature_dim="n", q=q, kappa=kappa).values
    ref = [brute_compressibility(r, q, kappa) for r in x]
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_compressibility_hand_values():
    z = xr.DataArray([3.0, 4.0, 0.0, 0.0], dims=["n"])
    # kappa=0.25 keeps 1 entry (the 4): remaining norm 3 of 5
    assert float(probe.compressibility(z, feature_dim="n", kappa=0.25)) == pytest.approx(1 - 3 / 5)
    assert float(probe.compressibility(xr.DataArray(np.zeros(5), dims=["n"]), feature_dim="n")) == 1.0
    with pytest.raises(MetricError):
        probe.compressibility(z, feature_dim="n", kappa=1.5)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 30)), elements=fin),
       st.floats(0, 1))
def test_compressibility_bounds(x, kappa):
    c = probe.compressibility(xr.DataArray(x, dims=["s", "n"]), feature_dim="n", kappa=kappa).values
    assert np.all((c >= -1e-12) & (c <= 1 + 1e-12))


# ----------------------------------------------------------------------------- sparsity / PQ
def test_sparsity_and_pq_index_hand_values():
    z = xr.DataArray([0.0, 2.0, 0.0, 0.0], dims=["n"])
    assert float(probe.sparsity(z, feature_dim="n")) == 0.75
    # one-sparse: 1 - d^(1/2-1) * 1 = 1 - 4^-0.5 = 0.5
    assert float(probe.pq_index(z, feature_dim="n")) == pytest.approx(0.5)
    assert float(probe.pq_index(xr.DataArray(np.ones(4), dims=["n"]), feature_dim="n")) == pytest.approx(0.0)
    assert float(probe.pq_index(xr.DataArray(np.zeros(4), dims=["n"]), feature_dim="n")) == 0.0
    with pytest.raises(MetricError):
        probe.pq_index(z, feature_dim="n", p=2, q=1)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=fin))
def test_pq_index_bounds(x):
    d = len(x)
    v = float(probe.pq_index(xr.DataArray(x, dims=["n"]), feature_dim="n"))
    assert -1e-9 <= v <= 1 - d ** (-0.5) + 1e-9


# ----------------------------------------------------------------------------- class separation
def brute_r2(x, labels):
    classes = np.unique(labels)
    K = len(classes)

    def cos(a, b):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return 0.0 if na == 0 or nb == 0 else a @ b / (na * nb)

    groups = [x[labels == c] for c in classes]
    dw = sum(sum(1 - cos(a, b) for a in g for b in g) / (K * len(g) ** 2) for g in groups)
    dt = sum(sum(1 - cos(a, b) for a in gj for b in gk) / (K**2 * len(gj) * len(gk)) for gj in groups for gk in groups)
    return 1 - dw / dt


def test_class_separation_matches_all_pairs():
    rng = np.random.default_rng(1)
    x = np.maximum(rng.standard_normal((40, 6)), 0)
    x[3] = 0  # an all-zero vector
    labels = rng.integers(0, 3, 40)
    got = float(probe.class_separation(acts_da(x), labels, sample_dim="s", feature_dim="n"))
    assert got == pytest.approx(brute_r2(x, labels), rel=1e-10)


def test_class_separation_degenerate():
    x = acts_da(np.eye(4))
    # perfectly separated orthogonal classes of one sample each
    assert float(probe.class_separation(x, np.arange(4), sample_dim="s", feature_dim="n")) == pytest.approx(1.0)
    with pytest.raises(MetricError, match="2 classes"):
        probe.class_separation(x, np.zeros(4), sample_dim="s", feature_dim="n")
    zero = float(probe.class_separation(acts_da(np.zeros((4, 3))), [0, 0, 1, 1], sample_dim="s", feature_dim="n"))
    assert zero == 0.0


# ----------------------------------------------------------------------------- CSI / BSI
def brute_csi(a, labels, eps=1e-8):
    classes = np.unique(labels)
    means = np.array([a[labels == c].mean() for c in classes])
    k = means.argmax()
    rest = np.delete(means, k).mean()
    rho = (a[labels == classes[k]] > 0).mean()
    return rho * (means[k] - rest) / (means[k] + rest + eps)


def test_csi_matches_per_neuron_reference():
    rng = np.random.default_rng(2)
    x = np.maximum(rng.standard_normal((60, 9)), 0)
    x[:, 4] = 0  # dead neuron
    labels = rng.integers(0, 3, 60)
    got = probe.class_selectivity(acts_da(x), labels, sample_dim="s", feature_dim="n").values
    ref = [brute_csi(x[:, j], labels) for j in range(9)]
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    assert got[4] == 0.0


def test_csi_hand_value_and_one_class():
    # neuron fires 2.0 on half of class 0, never on class 1: pi_max=1, pi_rest=0, rho=0.5
    a = np.array([[2.0], [0.0], [0.0], [0.0]])
    assert float(probe.class_selectivity(acts_da(a), [0, 0, 1, 1], sample_dim="s", feature_dim="n")[0]) == \
        pytest.approx(0.5, rel=1e-6)
    with pytest.raises(MetricError):
        probe.class_selectivity(acts_da(a), [1, 1, 1, 1], sample_dim="s", feature_dim="n")


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(4, 20), st.integers(1, 6)), elements=st.floats(0, 100)),
       st.integers(0, 10_000))
def test_csi_bounds_for_nonnegative_activations(x, seed):
    labels = np.random.default_rng(seed).integers(0, 2, len(x))
    labels[:2] = [0, 1]
    v = probe.class_selectivity(acts_da(x), labels, sample_dim="s", feature_dim="n").values
    assert np.all((v >= -1e-9) & (v <= 1 + 1e-9))


def test_selectivity_refuses_signed_activations():
    a = acts_da(np.array([[1.0, -0.5], [0.0, 2.0], [0.5, 1.0], [0.0, 0.0]]))
    with pytest.raises(MetricError, match="non-negative"):
        probe.class_selectivity(a, [0, 0, 1, 1], sample_dim="s", feature_dim="n")


def test_neuron_survival_hand_case():
    csi = xr.DataArray([[0.5, 0.1, 0.3], [0.5, 0.4, 0.0]], dims=["snapshot", "neuron"])
    bsi = xr.DataArray([[0.1, 0.2, 0.1], [0.1, 0.2, 0.2]], dims=["snapshot", "neuron"])
    s = probe.neuron_survival(csi, bsi)
    # t=0: class-dominant {0, 2}; at the end class-dominant {0, 1} -> 1/2 survive
    assert float(s.class_neuron_survival[0]) == 0.5
    # t=0: bias-dominant {1}; at the end it is class-dominant -> 0 survive
    assert float(s.bias_neuron_survival[0]) == 0.0
    assert float(s.class_neuron_survival[-1]) == 1.0


# ----------------------------------------------------------------------------- accuracy, loss ratio
def test_group_accuracy_hand_case():
    logits = xr.DataArray(np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=float), dims=["s", "class"])
    y = xr.DataArray([0, 1, 1, 0], dims=["s"])
    b = np.array([0, 1, 0, 1])
    out = probe.group_accuracy(logits, y, xr.DataArray(b, dims=["s"]), sample_dim="s")
    assert float(out.unbiased_accuracy) == 0.75
    assert float(out.worst_group_accuracy) == 0.0  # group (y=1, b=0) is wrong
    assert float(out.bc_accuracy) == 0.5 and float(out.ba_accuracy) == 1.0


def test_loss_ratio_and_ba_bc_ratio():
    r = probe.loss_ratio(xr.DataArray([1.0, 0.0, 3.0]), xr.DataArray([3.0, 0.0, 1.0]))
    np.testing.assert_allclose(r.values, [0.25, np.nan, 0.75])
    logits = xr.DataArray(np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), dims=["s", "class"])
    y = xr.DataArray([0, 0, 1], dims=["s"])
    ce = torch.nn.functional.cross_entropy(torch.tensor(logits.values), torch.tensor([0, 0, 1]), reduction="none")
    bc = xr.DataArray([False, True, True], dims=["s"])
    got = float(probe.ba_bc_loss_ratio(logits, y, bc, sample_dim="s"))
    assert got == pytest.approx(float(ce[0] / ce[1:].mean()))
    with pytest.raises(MetricError):
        probe.ba_bc_loss_ratio(logits, y, xr.DataArray([True] * 3, dims=["s"]), sample_dim="s")


# ----------------------------------------------------------------------------- importance weights
def test_importance_gini_lorenz():
    w = xr.DataArray(np.ones(10), dims=["s"])
    assert float(probe.gini(w, sample_dim="s")) == pytest.approx(0.0)
    lz = probe.lorenz_curve(w, sample_dim="s", points=11)
    np.testing.assert_allclose(lz.values, np.linspace(0, 1, 11), atol=1e-12)
    one = xr.DataArray(np.r_[np.zeros(9), 1.0], dims=["s"])
    assert float(probe.gini(one, sample_dim="s")) == pytest.approx(0.9)
    assert float(probe.gini(xr.DataArray(np.zeros(5), dims=["s"]), sample_dim="s")) == 0.0
    logits = xr.DataArray(np.array([[0.0, 0.0], [10.0, -10.0]]), dims=["s", "class"])
    iw = probe.importance_weights(logits, xr.DataArray([0, 0], dims=["s"]))
    np.testing.assert_allclose(iw.values, [0.5, 1 / (1 + np.exp(20))], rtol=1e-9)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(0, 1e3)))
def test_gini_bounds(w):
    g = float(probe.gini(xr.DataArray(w, dims=["s"]), sample_dim="s"))
    assert -1e-9 <= g <= 1


# ----------------------------------------------------------------------------- pruning
def test_structured_pruning_matches_rebuilt_network():
    from lrscope.train.nets import FCN

    torch.manual_seed(0)
    net = FCN(5, [8, 6], 3)
    x = torch.randn(200, 5)
    y = net(x).argmax(1)  # the unpruned net is 100% accurate on its own labels
    curve = probe.pruning_curve(net, x, y, kind="structured", kappas=[0.0, 0.5])
    assert float(curve.sel(kappa=0.0)) == 1.0
    # reference: zero the 4 lowest-norm rows of layer 1 and the 3 lowest of layer 2 by hand
    w1, w2, wh = (m.weight.detach().clone() for m in (net.features[1], net.features[3], net.head))
    w1[w1.norm(dim=1).argsort()[:4]] = 0
    w2[w2.norm(dim=1).argsort()[:3]] = 0
    ref = (torch.relu(torch.relu(x @ w1.T) @ w2.T) @ wh.T).argmax(1)
    assert float(curve.sel(kappa=0.5)) == pytest.approx((ref == y).float().mean().item())
    # the model is restored afterwards
    assert (net(x).argmax(1) == y).all()
    p = probe.prunability(curve)
    assert 0 <= float(p) <= 1


def test_pruned_accuracy_is_the_mean_pruned_accuracy_not_the_ratio():
    # a near-chance model that pruning cannot hurt and an accurate one that it halves
    kappa = {"kappa": [0.0, 0.5]}
    chance = xr.DataArray([0.55, 0.56], dims=["kappa"], coords=kappa)
    good = xr.DataArray([0.99, 0.60], dims=["kappa"], coords=kappa)
    assert float(probe.pruned_accuracy(chance)) == pytest.approx(0.555)
    assert float(probe.pruned_accuracy(good)) == pytest.approx(0.795)
    # the two readings disagree in direction on such a pair: the ratio favours the chance model
    # not clipped (the paper's definition): pruning that helps gives a retention ratio above 1
    assert float(probe.prunability(chance)) == pytest.approx((1 + 0.56 / 0.55) / 2)
    assert float(probe.prunability(good)) == pytest.approx((1 + 0.60 / 0.99) / 2)
    assert probe.pruned_accuracy(good).attrs["higher_is_better"] == 1


@pytest.mark.parametrize("bias", [False, True])
def test_sliced_fcn_pruning_matches_masking(bias):
    """The FCN shortcut (kept rows and columns sliced out) gives the masked network's accuracies,
    for structured and column pruning, with and without biases, up to κ = 1."""
    from lrscope.train.nets import FCN

    torch.manual_seed(2)
    net = FCN(7, [12, 9, 10], 4)
    if bias:
        for i in (1, 3, 5):
            old = net.features[i]
            net.features[i] = torch.nn.Linear(old.in_features, old.out_features)
        net.head = torch.nn.Linear(10, 4)
    x = torch.randn(400, 7)
    y = torch.randint(0, 4, (400,))
    y[:200] = net(x[:200]).argmax(1)  # half right at κ = 0
    kappas = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    for kind in ("structured", "column"):
        fast = probe.pruning_curve(net, x, y, kind=kind, kappas=kappas)
        masked = probe.pruning_curve(net, x, y, kind=kind, kappas=kappas, sliced=False)
        np.testing.assert_array_equal(fast.values, masked.values)
        assert len(np.unique(fast.values)) > 2  # pruning changes the predictions


def test_magnitude_and_column_pruning_monotone_in_zeros():
    from lrscope.train.nets import FCN

    torch.manual_seed(1)
    net = FCN(5, [16], 2)
    x = torch.randn(100, 5)
    y = net(x).argmax(1)
    for kind in ("magnitude", "column"):
        c = probe.pruning_curve(net, x, y, kind=kind, kappas=[0.0, 0.9])
        assert float(c.sel(kappa=0.0)) == 1.0
    with pytest.raises(Exception, match="kappa"):
        probe.pruning_curve(net, x, y, kappas=[1.5])


# ----------------------------------------------------------------------------- linear probe
@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
def test_linear_probe_agrees_with_sklearn(solver, monkeypatch):
    from sklearn.linear_model import LogisticRegression

    from lrscope.probe import linear
    from lrscope.probe.linear import balanced_halves, fit_logistic

    if solver == "lbfgs":  # the path wide features take
        monkeypatch.setattr(linear, "NEWTON_MAX_FEATURES", 0)

    rng = np.random.default_rng(3)
    n, d = 600, 20
    y = rng.integers(0, 2, n)
    b = np.where(rng.random(n) < 0.5, y, 1 - y)
    x = rng.standard_normal((n, d)) + 0.6 * y[:, None] * (np.arange(d) < 3) + 0.9 * b[:, None] * (np.arange(d) >= 17)
    tr, te = balanced_halves(y * 2 + b)
    for lab in (y, b):
        ours = (fit_logistic(x[tr], lab[tr])(x[te]) == lab[te]).mean()
        mu, sd = x[tr].mean(0), x[tr].std(0)
        sk = LogisticRegression(max_iter=2000).fit((x[tr] - mu) / sd, lab[tr])
        theirs = (sk.predict((x[te] - mu) / sd) == lab[te]).mean()
        assert abs(ours - theirs) <= 0.01
    res = probe.feature_probe(xr.DataArray(x, dims=["s", "n"]), y, b, sample_dim="s", feature_dim="n")
    assert 0 <= float(res.core_probe_error) < 0.5 and 0 <= float(res.spurious_probe_error) < 0.5


def test_multiclass_linear_probe_agrees_with_sklearn():
    from sklearn.linear_model import LogisticRegression

    from lrscope.probe.linear import fit_logistic

    rng = np.random.default_rng(5)
    n, d, k = 900, 12, 4
    y = rng.integers(0, k, n)
    x = rng.standard_normal((n, d)) + 0.5 * np.eye(k, d)[y] * 2
    tr, te = np.arange(0, n, 2), np.arange(1, n, 2)
    ours = (fit_logistic(x[tr], y[tr])(x[te]) == y[te]).mean()
    mu, sd = x[tr].mean(0), x[tr].std(0)
    sk = LogisticRegression(max_iter=2000).fit((x[tr] - mu) / sd, y[tr])
    theirs = (sk.predict((x[te] - mu) / sd) == y[te]).mean()
    assert 0.5 < ours and abs(ours - theirs) <= 0.01


def test_feature_probe_fits_each_snapshot_as_if_alone():
    """All snapshots are fitted as one batch; each must get the probe it would get on its own,
    and a snapshot with non-finite features gets NaN without disturbing the others."""
    from lrscope.probe.linear import balanced_halves, fit_logistic

    rng = np.random.default_rng(7)
    n, d = 400, 10
    y = rng.integers(0, 2, n)
    b = np.where(rng.random(n) < 0.5, y, 1 - y)
    acts = np.stack([rng.standard_normal((n, d)) + s * 0.4 * y[:, None] * (np.arange(d) < 2) for s in range(4)])
    acts[2, 0, 0] = np.nan
    res = probe.feature_probe(xr.DataArray(acts, dims=["snapshot", "s", "n"]), y, b, sample_dim="s", feature_dim="n")
    tr, te = balanced_halves(y * 2 + b)
    for s in (0, 1, 3):
        alone = (fit_logistic(acts[s][tr], y[tr])(acts[s][te]) != y[te]).mean()
        assert float(res.core_probe_error[s]) == pytest.approx(alone)
    assert np.isnan(float(res.core_probe_error[2])) and np.isnan(float(res.spurious_probe_error[2]))
    assert float(res.core_probe_error[3]) < float(res.core_probe_error[0])


# ----------------------------------------------------------------------------- degenerate inputs
nan_or_fin = st.one_of(st.just(np.nan), st.floats(-10, 10, allow_nan=False))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 12), st.integers(1, 8)), elements=nan_or_fin),
       st.integers(0, 10_000))
def test_metrics_on_nans_are_defined_or_nan(x, seed):
    """NaN inputs give NaN (or a value in range) for that entry, never an exception."""
    labels = np.random.default_rng(seed).integers(0, 2, len(x))
    labels[:2] = [0, 1]
    da = xr.DataArray(x, dims=["s", "n"])
    for v in (probe.compressibility(da, feature_dim="n").values, probe.pq_index(da, feature_dim="n").values,
              probe.sparsity(da, feature_dim="n").values):
        finite = v[np.isfinite(v)]
        assert np.all((finite >= -1e-9) & (finite <= 1 + 1e-9))
    rows_ok = np.isfinite(x).all(1)
    c = probe.compressibility(da, feature_dim="n").values
    assert np.all(np.isnan(c[~rows_ok]))
    probe.class_selectivity(abs(da), labels, sample_dim="s", feature_dim="n")  # NaN neurons, no raise
    r2 = float(probe.class_separation(da.fillna(0), labels, sample_dim="s", feature_dim="n"))
    assert -1 - 1e-9 <= r2 <= 1 + 1e-9


@pytest.mark.parametrize("fn", [
    lambda a, y: probe.class_selectivity(a, y, sample_dim="s", feature_dim="n"),
    lambda a, y: probe.class_separation(a, y, sample_dim="s", feature_dim="n"),
    lambda a, y: probe.feature_probe(a, y, y, sample_dim="s", feature_dim="n"),
])
def test_single_class_raises_a_clear_error(fn):
    a = xr.DataArray(np.random.default_rng(0).random((10, 3)), dims=["s", "n"])
    with pytest.raises(MetricError):
        fn(a, np.zeros(10, dtype=int))


def test_all_zero_and_empty_inputs():
    z = xr.DataArray(np.zeros((6, 4)), dims=["s", "n"])
    lab = np.array([0, 0, 0, 1, 1, 1])
    assert np.all(probe.class_selectivity(z, lab, sample_dim="s", feature_dim="n").values == 0)
    assert float(probe.class_separation(z, lab, sample_dim="s", feature_dim="n")) == 0.0
    assert np.all(probe.sparsity(z, feature_dim="n").values == 1.0)
    empty = xr.DataArray(np.zeros((0, 2)), dims=["s", "class"])
    with pytest.raises(MetricError):
        probe.group_accuracy(empty, xr.DataArray(np.zeros(0, int), dims=["s"]),
                             xr.DataArray(np.zeros(0, int), dims=["s"]), sample_dim="s")
    # a group with no samples is simply absent; worst-group is over the groups present
    logits = xr.DataArray(np.array([[1.0, 0.0], [0.0, 1.0]]), dims=["s", "class"])
    out = probe.group_accuracy(logits, xr.DataArray([0, 1], dims=["s"]), xr.DataArray([0, 1], dims=["s"]),
                               sample_dim="s")
    assert out.sizes["group"] == 2 and float(out.worst_group_accuracy) == 1.0 and "bc_accuracy" not in out
    assert float(probe.loss_ratio(xr.DataArray(0.0), xr.DataArray(0.0))) != 0.0  # NaN: undefined, not 0


# ----------------------------------------------------------------------------- attributions
@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift"])
def test_attributions_completeness_and_regions(method):
    from lrscope.train.nets import FCN

    torch.manual_seed(0)
    f = FCN(6, [8, 8], 2).eval()
    x = torch.randn(5, 6)
    t = torch.tensor([0, 1, 0, 1, 0])
    a = probe.attributions(f, x, t, method=method, n_steps=300)
    # bias-free ReLU net, zero baseline: attributions sum to the target logit
    np.testing.assert_allclose(a.sum("input_0").values, f(x).gather(1, t[:, None])[:, 0].detach().numpy(), atol=1e-4)
    da = xr.DataArray(np.array([[1.0, -3.0, 0.0, 0.0, 0.0, 0.0]]), dims=["s", "f"])
    core = xr.DataArray([True, False, False, False, False, False], dims=["f"])
    assert float(probe.region_shares(da, core, sample_dim="s")) == pytest.approx(0.25)
    assert float(probe.attribution_entropy(xr.DataArray(np.ones((1, 4)), dims=["s", "f"]), sample_dim="s")) == \
        pytest.approx(1.0)
    fg = xr.DataArray([[True, True, False, False, False, False]], dims=["s", "f"])
    assert float(probe.background_share(da, fg, sample_dim="s")) == 0.0


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift"])
def test_summed_gradients_match_captums_per_sample_roots(method):
    """One backward pass from the summed outputs gives Captum's own per-sample-root attributions
    (a torchvision ResNet with BatchNorm, in eval mode; several internal batches)."""
    from lrscope.train.models import create_model

    torch.manual_seed(1)
    net = create_model("resnet18", input_shape=(3, 16, 16), num_classes=3).eval()
    x = torch.randn(7, 3, 16, 16)
    t = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    fast = probe.attributions(net, x, t, method=method, n_steps=8, batch=3)
    ref = probe.attributions(net, x, t, method=method, n_steps=8, batch=3, per_sample_roots=True)
    assert abs(fast).sum() > 0
    torch.testing.assert_close(torch.from_numpy(fast.values), torch.from_numpy(ref.values), rtol=1e-4, atol=1e-6)


def test_deeplift_on_torchvision_resnet_with_inplace_reused_relus():
    import torchvision

    net = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    a = probe.attributions(net, x, torch.tensor([0, 2]), method="deeplift")
    assert a.shape == x.shape and np.isfinite(a.values).all()
    # the original model is untouched (still in-place, shared ReLUs)
    assert net.relu.inplace and net.layer1[0].relu.inplace


def test_sweep_analyses(tiny_sweep):
    import lrscope

    sw = lrscope.open_sweep(tiny_sweep)
    corr = probe.loss_ratio_correlation(sw)
    assert -1 <= float(corr.pearson_r) <= 1 and int(corr.n_runs) == 4
    sel = probe.lr_sensitive_samples(sw, low_lrs=[0.02], high_lrs=[0.5], high_frac=0.5, low_frac=0.5)
    # Fig. 8's selection is over the whole test split (the stored final test logits)
    assert sel.selected.dtype == bool and sel.sizes["test_sample"] == sw.sizes["test_sample"]
    # by definition the selected samples are right at high LR and wrong at low LR
    s = sel.selected.values
    assert s.any() and (sel.high_lr_correct.values[s] > 0.5).all() and (sel.low_lr_correct.values[s] < 0.5).all()
    hi_runs = [lrscope.open_run(p) for p, lr in zip(sw.attrs["stores"], sw.lr.values) if lr == 0.5]
    want = np.mean([r.test_logits.isel(snapshot=-1).argmax("class").values == r.test_y.values for r in hi_runs], 0)
    np.testing.assert_allclose(sel.high_lr_correct.values, want)
    pos = sel.probe_position.values
    assert (pos[sel.in_probe_subset.values] >= 0).all() and int(sel.in_probe_subset.sum()) == sw.sizes["probe_sample"]
    np.testing.assert_array_equal(np.flatnonzero(pos >= 0)[np.argsort(pos[pos >= 0])], sw.probe_test_index.values)
    sub = probe.lr_sensitive_samples(sw, low_lrs=[0.02], high_lrs=[0.5], high_frac=0.5, low_frac=0.5, split="probe")
    assert sub.sizes["probe_sample"] == sw.sizes["probe_sample"]
    with pytest.raises(MetricError):
        probe.lr_sensitive_samples(sw, low_lrs=[9.0], high_lrs=[0.5])
    # Fig. 12's maximum is over single minibatches; the epoch running mean's is kept beside it
    for store in sorted(Path(tiny_sweep).glob("*.zarr")):
        run = lrscope.open_run(store)
        ratio = run.loss_ratio.dropna("iteration").values
        assert float(run.max_loss_ratio) == pytest.approx(ratio.max())
        w = int(run.max_loss_ratio_smoothed.attrs["window"])
        means = [ratio[max(0, i - w + 1):i + 1].mean() for i in range(len(ratio))]
        assert float(run.max_loss_ratio_smoothed) == pytest.approx(max(means))


def test_structured_pruning_zeroes_channels_after_batchnorm():
    """torchvision ResNet: a pruned conv filter's channel is zero after its BatchNorm too."""
    import torchvision

    from lrscope.probe.pruning import _cut, _masked, prunable_layers

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).eval()
    with torch.no_grad():  # non-trivial BN shifts, which would revive a zeroed conv output
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.uniform_(0.5, 1.0)
    originals = [m.weight.detach().clone() for _, m in prunable_layers(net)]
    assert prunable_layers(net)[0][0] == "conv1"
    pruned = originals[0].flatten(1).norm(dim=1).argsort()[:32]
    with torch.no_grad():
        hooks = _masked(net, _cut(net, "structured", 0.5, "incoming", originals, chain=False), originals)
        out = net.maxpool(net.relu(net.bn1(net.conv1(torch.randn(2, 3, 32, 32)))))
    for hk in hooks:
        hk.remove()
    assert float(out[:, pruned].abs().sum()) == 0.0
    assert float(out.abs().sum()) > 0


def test_last_mistake_by_hand():
    # 3 steps, batch of 2, 2 classes; sample ids 0..3, labels [0, 1, 0, 1]
    idx = np.array([[0, 1], [2, 3], [1, -1]])
    logits = np.array([[[1, 0], [1, 0]],    # step 0: 0 right, 1 wrong
                       [[0, 1], [0, 1]],    # step 1: 2 wrong, 3 right
                       [[1, 0], [9, 9]]])   # step 2: 1 wrong again, padding ignored
    out = probe.last_mistake(idx, logits, np.array([0, 1, 0, 1]), n_samples=5)
    np.testing.assert_array_equal(out.values, [-1, 2, 1, -1, -1])
    assert out.dims == ("train_sample",)


def test_scale_free_measures_survive_tiny_and_huge_magnitudes():
    """Compressibility and the PQ-index do not depend on the vectors' scale: activations of 1e-159
    (whose squares are subnormal) or 1e150 give the values of the same vectors at scale 1 (a case
    hypothesis found: 4.35e-159 gave a PQ-index of -4e-8)."""
    from lrscope.probe import metrics as M

    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((5, 7)))
    x[0] = 1.0  # a constant vector
    for scale in (4.35262665e-159, 1e-300, 1e150):
        np.testing.assert_allclose(M.compressibility_np(x * scale), M.compressibility_np(x), atol=1e-12)
        np.testing.assert_allclose(M.pq_index_np(x * scale), M.pq_index_np(x), atol=1e-12)
