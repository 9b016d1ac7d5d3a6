"""Pruning as the paper defines it (issue #19) and probing that stays cheap on image models
(issue #20): unclipped κ-prunability, the structured-pruning criteria against a direct computation
on tiny networks, slicing equal to masking on the CNN, `lrprobe compute --device/--criterion`, and
per-probe progress naming the run and the probe."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

import lrscope
from lrscope import probe
from lrscope.cli.probe import main as lrprobe
from lrscope.probe.pruning import CRITERIA, prunable_layers, pruned_correct, structured_keep
from lrscope.train.nets import FCN, VGGLike

KAPPAS = [0.0, 0.25, 0.5, 0.75]


def test_prunability_is_not_clipped():
    """A network that pruning improves: its lowest-norm hidden unit only adds a harmful vote, so
    the retention ratio exceeds 1 and so does the prunability (the paper reaches 1.029)."""
    net = FCN(2, [2], 2)
    with torch.no_grad():
        net.features[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.1]]))  # unit 1: lowest incoming norm
        net.head.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, -100.0]]))
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    y = (x[:, 0] > 0).long()
    curve = probe.pruning_curve(net, x, y, kappas=KAPPAS)
    np.testing.assert_array_equal(curve.values, [0.75, 0.75, 1.0, 1.0])  # κ ≥ 0.5 removes unit 1
    p = float(probe.prunability(curve))
    assert p == pytest.approx((1 + 1 + 4 / 3 + 4 / 3) / 4) and p > 1


def _manual_keep(net, criterion: str, kappa: float) -> list[np.ndarray]:
    """The kept units of each prunable layer, computed here with numpy from the weights."""
    ws = [m.weight.detach().numpy() for _, m in prunable_layers(net)]
    head = net.head.weight.detach().numpy()
    inc = [np.sqrt((w.reshape(len(w), -1) ** 2).sum(1)) for w in ws]
    nxt = ws[1:] + [head]
    out = [np.sqrt((np.moveaxis(w, 1, 0).reshape(w.shape[1], -1) ** 2).sum(1)) for w in nxt]

    def lowest(s, k):
        keep = np.ones(len(s), bool)
        keep[np.argsort(s, kind="stable")[:k]] = False
        return keep

    if criterion == "incoming-global":
        allk = lowest(np.concatenate(inc), int(np.floor(kappa * sum(map(len, inc)))))
        return np.split(allk, np.cumsum([len(s) for s in inc])[:-1])
    scores = {"incoming": inc, "outgoing": out, "in-x-out": [a * b for a, b in zip(inc, out)]}[criterion]
    return [lowest(s, int(np.floor(kappa * len(s)))) for s in scores]


def _masked_accuracy(net, keeps, x, y) -> float:
    """Zero the pruned units' incoming weights (bias-free nets: the unit then outputs exactly 0)."""
    layers = prunable_layers(net)
    saved = [m.weight.detach().clone() for _, m in layers]
    try:
        with torch.no_grad():
            for (_, m), k in zip(layers, keeps):
                m.weight[torch.from_numpy(~k)] = 0
            return float((net(x).argmax(1) == y).float().mean())
    finally:
        with torch.no_grad():
            for (_, m), w in zip(layers, saved):
                m.weight.copy_(w)


def _tiny_nets():
    torch.manual_seed(0)
    fcn = FCN(6, [10, 8], 3)
    cnn = VGGLike(3, 4, width=0.0625).eval()  # 4-32 channels: every layer prunes units at κ = 0.25
    return [(fcn, torch.randn(300, 6)), (cnn, torch.randn(120, 3, 12, 12))]


@pytest.mark.parametrize("which", [0, 1], ids=["fcn", "cnn"])
def test_criteria_match_a_direct_computation(which):
    net, x = _tiny_nets()[which]
    y = torch.randint(0, net.head.out_features, (len(x),))
    with torch.no_grad():
        y[: len(x) // 2] = net(x[: len(x) // 2]).argmax(1)  # half right unpruned
    masks = {}
    for c in CRITERIA:
        curve = probe.pruning_curve(net, x, y, criterion=c, kappas=KAPPAS)
        assert curve.attrs["criterion"] == c
        for kappa in KAPPAS:
            keeps = _manual_keep(net, c, kappa)
            got = [k.numpy() for k in structured_keep(net, kappa, c)]
            assert all(np.array_equal(a, b) for a, b in zip(got, keeps)), (c, kappa)
            assert float(curve.sel(kappa=kappa)) == pytest.approx(_masked_accuracy(net, keeps, x, y)), (c, kappa)
        masks[c] = [np.concatenate(_manual_keep(net, c, k)) for k in KAPPAS]
    # the criteria are different rankings: each pair disagrees on which units go at some κ
    for i, a in enumerate(CRITERIA):
        for b in CRITERIA[i + 1:]:
            assert any(not np.array_equal(u, v) for u, v in zip(masks[a], masks[b])), (a, b)


def test_cnn_slicing_equals_masking_for_every_kind():
    """The CNN's pruned networks evaluated on their kept units (first layer's outputs shared)
    give the masked networks' correct counts, for every kind and criterion, up to κ = 1."""
    net, x = _tiny_nets()[1]
    y = torch.randint(0, 4, (len(x),))
    with torch.no_grad():
        y[:60] = net(x[:60]).argmax(1)
    specs = [("structured", c) for c in CRITERIA] + [("magnitude", None), ("column", None)]
    kappas = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    fast = pruned_correct(net, x, y, specs, kappas)
    masked = pruned_correct(net, x, y, specs, kappas, sliced=False)
    np.testing.assert_array_equal(fast, masked)
    assert len(np.unique(fast)) > 4  # pruning changes the predictions
    before = [m.weight.detach().clone() for _, m in prunable_layers(net)]
    pruned_correct(net, x, y, specs, kappas, batch=7)  # in several batches: the same counts
    np.testing.assert_array_equal(pruned_correct(net, x, y, specs, kappas, batch=7), fast)
    assert all(torch.equal(a, m.weight) for a, (_, m) in zip(before, prunable_layers(net)))  # restored


def test_outgoing_criteria_need_a_chain():
    import torchvision

    net = torchvision.models.resnet18(num_classes=3)
    structured_keep(net, 0.5, "incoming-global")  # defined on any network
    with pytest.raises(probe.MetricError, match="chain"):
        structured_keep(net, 0.5, "outgoing")


# ----------------------------------------------------------------------------- the probe and its CLI
@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A tiny Colored MNIST (sklearn digits) CNN run, trained for real."""
    from lrscope.train.loop import train_run

    from conftest import tiny_config

    cfg = tiny_config(dataset="colored_mnist", model="cnn", data_options={"base": "digits", "n_train": 200,
                                                                          "n_test": 120},
                      model_options={"width": 0.125}, widths=None, max_steps=20, snapshot_every=10,
                      checkpoint_every=10, probe_size=40, batch_size=20, stop="max-steps")
    return train_run(cfg, tmp_path_factory.mktemp("cnn"), progress=False).path


def test_probe_criteria_dimension_and_device(cnn_run, tmp_path):
    import shutil

    from lrscope.probe.runner import compute_run

    store = tmp_path / cnn_run.name
    shutil.copytree(cnn_run, store)
    out = compute_run(store, ["pruning"], params={"criterion": "all"}, device="auto")
    assert out["pruning"].startswith("computed"), out
    ds = lrscope.open_run(store)
    assert list(ds.criterion.values) == list(CRITERIA)
    xr.testing.assert_equal(ds.pruning_by_criterion.sel(criterion="incoming", drop=True),
                            ds.pruning_structured.drop_attrs().rename("pruning_by_criterion")
                            .assign_attrs(ds.pruning_by_criterion.attrs))
    assert float(ds.prunability) == float(ds.prunability_by_criterion.sel(criterion="incoming"))
    n = int(ds.pruning_samples)
    assert n == 120 and ds.pruning_structured.attrs["evaluated_samples"] == n
    a = ds.pruning_magnitude.values
    np.testing.assert_allclose(ds.pruning_magnitude_se.values, np.sqrt(a * (1 - a) / n))
    assert ds.pruning_samples.attrs["units"] == "count" and ds.pruning_structured_se.attrs["units"] == "fraction"
    from lrscope.store.reader import read_probe

    res = read_probe(store, "pruning")
    assert res.attrs["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # auto
    # the device is not part of the provenance: the result stays up to date on the other device
    assert compute_run(store, ["pruning"], params={"criterion": "all"}, device="cpu")["pruning"] == "up to date"


def test_cli_device_cpu_and_progress_names_run_and_probe(cnn_run, tmp_path):
    import shutil

    store = tmp_path / cnn_run.name
    shutil.copytree(cnn_run, store)
    res = CliRunner().invoke(lrprobe, ["compute", str(store), "--device", "cpu", "--only",
                                       "accuracy,pruning,attributions"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    frames = [f.strip() for f in re.split(r"[\r\n]+", res.output) if "probes |" in f]
    run_id = cnn_run.name[:-5]
    for name in ("accuracy", "pruning", "attributions"):
        assert any(f"{run_id}: {name}" in f for f in frames), (name, frames)
    counts = [int(m.group(1)) for f in frames if (m := re.search(r"(\d)/3 probes", f))]
    assert counts[0] == 0 and counts[-1] == 3 and sorted(counts) == counts and len(set(counts)) == 4
    assert all("ETA" in f for f in frames) and "run 1/1" in frames[-1]
    from lrscope.store.reader import read_probe

    assert read_probe(store, "pruning").attrs["device"] == "cpu"
    assert read_probe(store, "attributions").attrs["device"] == "cpu"
    assert "device" not in read_probe(store, "accuracy").attrs  # it runs no network
    res = CliRunner().invoke(lrprobe, ["compute", str(store), "--only", "pruning", "--force", "--quiet"],
                             catch_exceptions=False)
    assert res.exit_code == 0 and "probes |" not in res.output and res.output.startswith("1 runs: 1 probes computed")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cli_device_cuda_without_gpu_is_one_line(cnn_run):
    res = CliRunner().invoke(lrprobe, ["compute", str(cnn_run), "--device", "cuda"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "no CUDA GPU" in lines[0]
    assert lines[0].startswith("Error: --device")


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift"])
def test_exact_attributions_of_homogeneous_nets_equal_captums(method):
    """On the bias-free FCN and CNN, Integrated Gradients (any number of steps) and DeepLift from
    the zero baseline are x ⊙ ∇f(x): the one-pass shortcut equals Captum's computation."""
    from lrscope.probe.attribution import attribution_rule, attributions_torch, positively_homogeneous

    for net, x in _tiny_nets():
        t = torch.randint(0, net.head.out_features, (len(x),))[:40]
        x = x[:40]
        assert positively_homogeneous(net) and attribution_rule(net, method, 32).startswith("exact")
        fast = attributions_torch(net, x, t, method=method)
        ref = attributions_torch(net, x, t, method=method, exact=False, n_steps=32)
        assert fast.abs().sum() > 0
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    biased = FCN(6, [8], 3)
    biased.features[1] = torch.nn.Linear(6, 8)  # a bias: no longer homogeneous, Captum computes it
    assert not positively_homogeneous(biased) and attribution_rule(biased, method, 32).startswith("Captum")


def test_group_balanced_evaluation_subset(cnn_run, tmp_path):
    import shutil

    from lrscope.probe.runner import balanced_subset, compute_run

    y = np.array([0] * 10 + [1] * 3 + [0] * 5 + [1] * 6)
    b = np.array([0] * 10 + [1] * 3 + [1] * 5 + [0] * 6)
    pos = balanced_subset(y, b, 10)
    groups = y[pos] * 2 + b[pos]
    assert len(pos) == 10 and sorted(np.bincount(groups, minlength=4)) == [2, 2, 3, 3]  # (1,1) has 3 only
    assert np.array_equal(pos, np.sort(pos)) and len(set(pos)) == 10
    store = tmp_path / cnn_run.name
    shutil.copytree(cnn_run, store)
    compute_run(store, ["pruning"], params={"eval_samples": 40})
    ds = lrscope.open_run(store)
    assert int(ds.pruning_samples) == 40 and "group-balanced subset" in ds.pruning_structured.attrs["evaluated_on"]
    a = ds.pruning_column.values
    np.testing.assert_allclose(ds.pruning_column_se.values, np.sqrt(a * (1 - a) / 40))


def test_prunability_sum_is_the_sum_the_papers_text_names():
    """Barsbey et al. (2025, §3.2) say "the sum of these retention ratios over a range of κ"; lrscope's
    prunability is their mean (Table 1's scale) and prunability_sum the sum, by hand here."""
    import xarray as xr

    from lrscope.probe import prunability, prunability_sum

    acc = np.array([0.8, 0.8, 0.84, 0.6, 0.4])
    curve = xr.DataArray(acc, dims=["kappa"], coords={"kappa": [0.0, 0.1, 0.2, 0.3, 0.4]})
    ratios = acc / acc[0]
    assert float(prunability_sum(curve)) == pytest.approx(ratios.sum())
    assert float(prunability(curve)) == pytest.approx(ratios.mean())
