"""Issue #19: the paper's definitions, without our additions."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import xarray as xr

from lrscope.probe import metrics as M
from lrscope.probe.runner import selective_representation
from lrscope.train.models import MODELS, create_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_selectivity_representation_is_non_negative_for_every_model(name):
    """CSI and BSI lie in [0, 1] for every model of the registry: its penultimate activations are
    non-negative, or the entry says they are signed and the probes rectify them."""
    e = MODELS[name]
    shape = (3, 32, 32) if e.image else (20,)
    torch.manual_seed(0)
    model = create_model(name, input_shape=shape, num_classes=4).eval()
    with torch.inference_mode():
        h = model.forward_features(torch.rand(24, *shape) * 2 - 0.5).double().numpy()
    feats = xr.DataArray(h[None], dims=["snapshot", "probe_sample", "neuron"])
    if e.signed_features:
        assert h.min() < 0  # the flag is needed
    else:
        assert h.min() >= 0, f"{name}: penultimate activations are signed; declare signed_features=True"
    rep = selective_representation(feats, name)
    assert float(rep.min()) >= 0 and rep.attrs["representation"]
    y, b = np.arange(24) % 4, (np.arange(24) // 4) % 2
    for labels in (y, b):
        v = M.selectivity(rep, labels, sample_dim="probe_sample", feature_dim="neuron").values
        assert np.all((v >= 0) & (v <= 1)), (name, v.min(), v.max())
    with pytest.raises(M.MetricError) if e.signed_features else contextlib.nullcontext():
        M.selectivity(feats, y, sample_dim="probe_sample", feature_dim="neuron")


def test_parameter_compressibility_uses_weight_tensors_as_diao_et_al(tmp_path, tiny):
    """Diao et al. compute the PQ-index of weights: a ResNet's BatchNorm scales and shifts
    (1-dimensional) are left out, globally and per tensor."""
    import json

    from lrscope.probe.runner import compute_run
    from lrscope.store.reader import open_run
    from lrscope.train.loop import train_run
    from lrscope.train.restore import load_model

    cfg = tiny(dataset="colored_mnist", model="resnet18", data_options={"base": "digits", "n_train": 50, "n_test": 30},
               max_steps=3, probe_size=10, batch_size=10, stop="max-steps")
    path = train_run(cfg, tmp_path, progress=False).path
    compute_run(path, ["compressibility"])
    ds = open_run(path)
    layers = json.loads(ds.layer_param_compressibility.attrs["layers"])
    model = load_model(ds, checkpoint=-1)
    want = [n for n, p in model.named_parameters() if p.ndim > 1]
    assert layers == want and "net.bn1.weight" not in layers and "net.conv1.weight" in layers
    w = np.concatenate([p.detach().numpy().ravel() for n, p in model.named_parameters() if p.ndim > 1])
    ref = float(M.pq_index(xr.DataArray(w, dims=["weight"]), feature_dim="weight"))
    assert float(ds.param_pq_index) == pytest.approx(ref, rel=1e-6)


def test_average_accuracy_weights_test_groups_by_training_group_sizes(tiny_sweep):
    """"Average accuracy" (Waterbirds/CelebA papers): each test group's accuracy weighted by its
    share of the training set — beside the paper's unbiased accuracy, each labelled."""
    from lrscope.store.reader import open_run

    path = sorted(p for p in tiny_sweep.iterdir() if p.suffix == ".zarr")[0]
    ds = open_run(path)
    n_b = int(ds.test_b.max()) + 1
    counts = np.bincount(ds.train_y.values * n_b + ds.train_b.values, minlength=4)
    logits = ds.test_logits.isel(snapshot=-1).values
    correct = logits.argmax(-1) == ds.test_y.values
    g = ds.test_y.values * n_b + ds.test_b.values
    want = sum(counts[k] / counts.sum() * correct[g == k].mean() for k in np.unique(g))
    assert float(ds.average_accuracy_final) == pytest.approx(want, rel=1e-6)
    assert float(ds.unbiased_accuracy_final) == pytest.approx(correct.mean(), rel=1e-6)
    assert "training" in ds.average_accuracy.attrs["long_name"]
    assert ds.average_accuracy.attrs["units"] == "fraction"


def test_a_run_out_of_steps_before_its_stop_criterion_says_so(tmp_path, tiny):
    """The demo's LR 0.01 runs ended at 99.6% train accuracy as plain "completed"."""
    from click.testing import CliRunner

    from lrscope.cli.probe import main as lrprobe
    from lrscope.store.reader import open_run, open_sweep
    from lrscope.train.loop import train_run

    short = train_run(tiny(lr=0.001, max_steps=16, stop="train-acc"), tmp_path, progress=False)
    fixed = train_run(tiny(lr=0.001, max_steps=16, stop="max-steps", seed=1), tmp_path, progress=False)
    a, b = open_run(short.path), open_run(fixed.path)
    assert a.attrs["status"] == b.attrs["status"] == "completed"
    assert a.attrs["stop_criterion_met"] is False and b.attrs["stop_criterion_met"] is True
    assert "max_steps=16 reached before the stop criterion (100% train accuracy)" in a.attrs["reason"]
    assert "running train accuracy" in a.attrs["reason"]
    sw = open_sweep(tmp_path, probes=False)
    assert dict(zip(sw.seed.values.tolist(), sw.stop_criterion_met.values.tolist())) == {0: False, 1: True}
    out = CliRunner().invoke(lrprobe, ["ls", str(tmp_path)]).output
    line = next(ln for ln in out.splitlines() if ln.startswith(a.attrs["run_id"]))
    assert " max_steps " in line
    assert " completed " in next(ln for ln in out.splitlines() if ln.startswith(b.attrs["run_id"]))


# Barsbey et al., supplement §C and Table 1, written out independently of scripts/paper_specs.py:
# "a FCN with two hidden layers of width 1024 ... we increase bias-conflicting ratio rho to 0.25, and
# increase network width to 2048 for [MNIST-CIFAR and Corrupted CIFAR-10]"; the synthetic sets'
# FCN is 3x200 (main text, Fig. 3; §C's "two hidden layers and 200 width" contradicts it); batch
# size 100, 16 for Swin-T; parity split 10000/10000; Table 1's LR ranges.
SUPPLEMENT_FCN = {"mnist_cifar": ([2048, 2048], 0.25), "corrupted_cifar10": ([2048, 2048], 0.25),
                  "colored_mnist": ([1024, 1024], 0.025), "double_mnist": ([1024, 1024], 0.025),
                  "parity": ([200, 200, 200], 0.1), "moon_star": ([200, 200, 200], 0.1)}
TABLE1_LR = {("mnist_cifar", "fcn"): (0.001, 0.01), ("corrupted_cifar10", "fcn"): (0.0001, 0.005),
             ("colored_mnist", "fcn"): (0.001, 0.5), ("double_mnist", "fcn"): (0.001, 0.5),
             ("parity", "fcn"): (0.01, 0.75), ("moon_star", "fcn"): (0.01, 0.75),
             ("colored_mnist", "cnn"): (0.01, 0.35), ("colored_mnist", "resnet18"): (0.001, 0.25),
             ("celeba", "swin_t"): (1e-7, 1e-4)}


def test_every_table1_spec_has_the_supplements_settings():
    from pathlib import Path

    from lrscope.train.data import entry as dataset_entry
    from lrscope.train.sweep import load_spec

    specs = sorted((Path(__file__).resolve().parents[1] / "examples" / "paper").glob("table1-*.toml"))
    assert len(specs) == 23
    seen = set()
    for spec in specs:
        configs = load_spec(spec)
        c = configs[0]
        key = (c.dataset, c.model)
        seen.add(key)
        assert {x.seed for x in configs} == {0, 1, 2}, spec.name
        assert all(x.batch_size == (16 if c.model == "swin_t" else 100) for x in configs), spec.name
        rho = c.bias_conflicting_ratio if c.bias_conflicting_ratio is not None else dataset_entry(c.dataset).rho_train
        if c.model == "fcn":
            widths, want_rho = SUPPLEMENT_FCN[c.dataset]
            assert c.widths == widths, spec.name
            assert rho == pytest.approx(want_rho), spec.name
        if c.dataset == "parity":
            assert (c.data_options.get("n_train", 10000), c.data_options.get("n_test", 10000)) == (10000, 10000)
        if key in TABLE1_LR:
            lrs = sorted({x.lr for x in configs})
            assert (lrs[0], lrs[-1]) == TABLE1_LR[key], spec.name
    assert len(seen) == 23


def test_a_sweeps_attributed_checkpoints_line_up(tmp_path, tiny):
    """Runs of different lengths: isel(attr_checkpoint=-1) is each run's last attributed
    checkpoint (it was NaN for the shorter runs: the dim held checkpoint positions)."""
    import lrscope
    from lrscope.probe.runner import compute_run
    from lrscope.train.loop import train_run

    for steps, seed in ((40, 0), (120, 1)):
        r = train_run(tiny(max_steps=steps, stop="max-steps", seed=seed), tmp_path, progress=False)
        compute_run(r.path, ["attributions"], params={"attr_samples": 16, "ig_steps": 4})
    sw = lrscope.open_sweep(tmp_path)
    last = sw.ig_entropy.isel(attr_checkpoint=-1)
    assert np.isfinite(last.values).all()
    by_seed = dict(zip(sw.seed.values.tolist(), sw.attr_iteration.isel(attr_checkpoint=-1).values.tolist()))
    assert by_seed == {0: 40, 1: 120}
    assert sw.attr_iteration.isel(attr_checkpoint=0).values.tolist() == [0, 0]
    # parity's shares: raw mass shares and size-normalised ones (mass per input, summing to 1)
    regions = sw.regions.isel(run=0) if "run" in sw.regions.dims else sw.regions
    sizes = {str(r): int(regions.sel(region=r).sum()) for r in sw.region.values}
    assert sizes == {"core": 3, "spurious": 1, "noise": 6}
    raw = {r: sw[f"ig_{r}_share"].values for r in sizes}
    per = {r: raw[r] / sizes[r] for r in sizes}
    tot = sum(per.values())
    for r in sizes:
        np.testing.assert_allclose(sw[f"ig_{r}_share_per_input"].values, per[r] / tot, rtol=1e-6)
    assert "size-normalised" in sw.ig_core_share_per_input.attrs["long_name"]


def test_the_attribution_shares_figure_shows_raw_and_size_normalised(tiny_sweep):
    import holoviews as hv

    import lrscope
    from lrscope.viz.figures import attribution_shares

    hv.extension("bokeh", logo=False)
    fig = attribution_shares(lrscope.open_sweep(tiny_sweep))
    titles = [p.opts.get(backend="bokeh").kwargs.get("title", "") for p in fig]
    assert len(fig) == 2 and "raw share" in titles[0] and "size-normalised" in titles[1]
    assert {el.label for el in fig.values()[1] if el.label} == {"core", "spurious", "noise"}


def test_fig9_landscape_from_a_2d_sweep(tmp_path, tiny):
    """A miniature of Fig. 9: LR x focal gamma, probed, drawn as three heatmaps of seed means."""
    import holoviews as hv

    import lrscope
    from lrscope.probe.runner import compute_paths
    from lrscope.train.loop import train_run
    from lrscope.viz.figures import FIGURES, landscape

    for lr in (0.05, 0.5):
        for gamma in (0.5, 3.0):
            train_run(tiny(lr=lr, loss="focal", focal_gamma=gamma, max_steps=48, stop="max-steps"), tmp_path,
                      progress=False)
    compute_paths(tmp_path, ["accuracy", "representation"], progress=False)
    sw = lrscope.open_sweep(tmp_path)
    assert FIGURES["landscape"].applies(sw)
    hv.extension("bokeh", logo=False)
    fig = landscape(sw)
    assert len(fig) == 3
    loss_map = fig.values()[0]
    assert loss_map.kdims[0].name == "lr" and loss_map.kdims[1].name == "focal_gamma"
    got = {(r[0], r[1]): r[2] for r in loss_map.dframe().itertuples(index=False)}
    for i in range(sw.sizes["run"]):
        key = (f"{float(sw.lr[i]):g}", f"{float(sw.focal_gamma[i]):g}")
        assert got[key] == pytest.approx(np.log10(float(sw.train_loss_final[i])))
    hv.render(fig, backend="bokeh")
    assert not FIGURES["landscape"].applies(sw.isel(run=[0, 1]).where(sw.focal_gamma == 0.5, drop=True))


def test_prop2_gradient_ratio_equals_autograd_on_the_head(tmp_path, tiny):
    """The spurious/core gradient-norm ratio at the final snapshot equals autograd's per-sample
    head gradients, split by the neurons' dominance (CSI > BSI)."""
    import torch

    from lrscope.probe.runner import compute_run
    from lrscope.store.reader import open_run
    from lrscope.train.data import as_model_input
    from lrscope.train.loop import train_run
    from lrscope.train.restore import load_model

    path = train_run(tiny(lr=0.2, max_steps=80, stop="max-steps"), tmp_path, progress=False).path
    compute_run(path, ["subnetwork_gradients", "representation"])
    ds = open_run(path)
    assert ds.head_column_grad_ratio.sizes["snapshot"] == ds.sizes["snapshot"]
    model = load_model(ds, checkpoint=-1).double()
    x = as_model_input(torch.from_numpy(ds.probe_inputs.values)).double()
    y = torch.from_numpy(ds.probe_y.values).long()
    spurious = ~(ds.csi.isel(snapshot=-1).values > ds.bsi.isel(snapshot=-1).values)
    assert 0 < spurious.sum() < len(spurious)
    gs = gc = 0.0
    for i in range(len(y)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        gw = model.head.weight.grad
        gs += float(gw[:, torch.from_numpy(spurious)].norm())
        gc += float(gw[:, torch.from_numpy(~spurious)].norm())
    assert float(ds.head_column_grad_ratio_final) == pytest.approx(gs / gc, rel=1e-3)
    bc = ds.probe_y.values != ds.probe_b.values
    assert np.isfinite(ds.head_column_grad_ratio_bc.values).any() and bc.any()


def test_neuron_resets_follow_the_checkpoints(tmp_path, tiny):
    """Fig. 18 (bottom) miniature: the spurious share of the most bias-selective neurons at every
    checkpoint, their update norms equal the stored weights' differences, and resets are falls."""
    import torch
    from captum.attr import InputXGradient

    from lrscope.probe.resets import RESET_DROP, incoming_weights
    from lrscope.probe.runner import compute_run
    from lrscope.store.reader import open_run
    from lrscope.train.data import as_model_input
    from lrscope.train.loop import train_run
    from lrscope.train.restore import load_model

    path = train_run(tiny(lr=0.3, max_steps=160, checkpoint_every=20, stop="max-steps"), tmp_path,
                     progress=False).path
    out = compute_run(path, ["neuron_resets", "representation"], params={"attr_samples": 40, "reset_neurons": 3})
    assert out["neuron_resets"].startswith("computed"), out
    ds = open_run(path)
    assert ds.sizes["reset_checkpoint"] == ds.sizes["checkpoint"] == 9 and ds.sizes["reset_neuron"] == 3
    top = np.argsort(-ds.bsi.isel(snapshot=-1).values, kind="stable")[:3]
    np.testing.assert_array_equal(ds.reset_neuron_index.values, top)
    # the update norm of neuron j between checkpoints 3 and 4, from the stored weights
    m3, m4 = load_model(ds, checkpoint=3), load_model(ds, checkpoint=4)
    j = int(top[0])
    assert incoming_weights(m3, 32) == "features.3.weight"  # widths 32, 32: the second hidden layer
    want = float((m4.features[3].weight[j].double() - m3.features[3].weight[j].double()).norm().detach())
    assert float(ds.neuron_update_norm.isel(reset_checkpoint=4, reset_neuron=0)) == pytest.approx(want, rel=1e-9)
    # the share at the last checkpoint, recomputed directly
    x = as_model_input(torch.from_numpy(ds.probe_inputs.values))
    pos = np.linspace(0, len(x) - 1, 40).round().astype(int)
    a = InputXGradient(load_model(ds, checkpoint=-1).eval().forward_features).attribute(
        x[pos].clone().requires_grad_(True), target=j).detach().abs().numpy()
    spur = ds.regions.sel(region="spurious").values
    live = a.sum(1) > 0  # inputs on which the neuron is off attribute nothing: left out, as region_shares does
    want_share = np.mean(a[live][:, spur].sum(1) / a[live].sum(1))
    assert float(ds.neuron_spurious_share.isel(reset_checkpoint=-1, reset_neuron=0)) == pytest.approx(want_share,
                                                                                                       rel=1e-5)
    s = ds.neuron_spurious_share.values
    falls = np.vstack([np.zeros((1, 3), bool), (s[:-1] - s[1:]) >= RESET_DROP])
    np.testing.assert_array_equal(ds.neuron_resets.values, falls)
    assert int(ds.reset_count) == int(falls.sum())


def test_per_run_coordinates_of_neuron_resets_stay_per_run(tiny_sweep, tmp_path):
    """Each run keeps its own examined iterations and followed neurons in open_sweep (they were
    coordinates shared across runs: the figure drew one run against another's iterations).
    neuron_resets is a specialist probe: `compute` leaves it out unless asked by name."""
    import shutil

    import lrscope
    from lrscope.probe.runner import compute_paths

    assert "neuron_spurious_share" not in lrscope.open_sweep(tiny_sweep)  # not a default probe
    shutil.copytree(tiny_sweep, tmp_path / "sw")
    tiny_sweep = tmp_path / "sw"
    compute_paths(tiny_sweep, ["neuron_resets"], progress=False)
    sw = lrscope.open_sweep(tiny_sweep)
    for name in ("reset_iteration", "reset_neuron_index", "attr_iteration"):
        assert "run" in sw[name].dims, name
    for i, store in enumerate(sw.attrs["stores"]):
        ds = lrscope.open_run(store)
        n = ds.sizes["reset_checkpoint"]
        np.testing.assert_array_equal(sw.reset_iteration.isel(run=i).values[:n], ds.reset_iteration.values)
        np.testing.assert_array_equal(sw.reset_neuron_index.isel(run=i).values, ds.reset_neuron_index.values)


def test_a_partial_replication_keeps_the_other_sweeps_dated(tmp_path):
    """`make replicate ONLY=...` rewrites its sweeps and keeps the last results of the others,
    marked with the date they were computed on (twice over: the date does not move)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "replicate", Path(__file__).resolve().parents[1] / "scripts" / "replicate.py")
    rep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rep)
    doc = tmp_path / "replication.md"
    doc.write_text("# old\n\nRegenerated by `x` on 2026-01-02 with lrscope 0.0.\n\n"
                   "| sweep | claim | ours | r | holds? |\n|---|---|---|---|---|\n"
                   "| Colored MNIST / CNN | unbiased test accuracy rises with LR | 1 → 2 | +0.50 | **no** |\n\n"
                   "## Colored MNIST / CNN\n\nSpec: old numbers.\n\n| metric | a |\n|---|---|\n\n"
                   "## Where we disagree with the paper, and why we think so\n\n- old text\n")
    for _ in range(2):
        rep.main(["--no-train", "--only", "parity-fcn", "--out", str(tmp_path / "runs"), "--doc", str(doc)])
        text = doc.read_text()
        assert "> Not re-run since 2026-01-02" in text and "Spec: old numbers." in text
        assert "| Colored MNIST / CNN (2026-01-02) | unbiased test accuracy rises with LR |" in text
        assert "`parity-fcn`: `python scripts/replicate.py --only parity-fcn`" in text  # no stores: not run yet
        assert text.count("## Colored MNIST / CNN") == 1


def test_fcn_default_is_the_supplements_fcn_for_each_dataset():
    """`lrtrain run --dataset X --model fcn` (no --widths) builds the FCN the paper uses on X."""
    from lrscope.train.config import RunConfig
    from lrscope.train.restore import fcn_widths

    for dataset, (widths, _) in SUPPLEMENT_FCN.items():
        assert fcn_widths(RunConfig(dataset=dataset, model="fcn"))[0] == widths, dataset
    assert fcn_widths(RunConfig(dataset="cifar10", model="fcn"))[0] is None  # not in the paper: by input shape
    assert fcn_widths(RunConfig(dataset="moon_star", model="fcn", widths=[8]))[0] == [8]
