"""Proposition 2 of Barsbey et al. (2025, supplement D.2) as stated: per-sample gradient norms of the
loss with respect to the spurious and the core subnetworks on training minibatches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lrscope.probe.subnetworks import per_sample_unit_grad_sq, unit_grad_sq, unit_kinds, unit_parameters
from lrscope.train.models import create_model


def _by_hand(model, x, y, params):
    """Independent reference: full gradients by backward(), sliced by unit by hand."""
    out = []
    named = dict(model.named_parameters())
    for i in range(len(y)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        tot = 0
        for n, axis in params.items():
            g = named[n].grad.double()
            per_unit = [(g.select(axis, j) ** 2).sum() for j in range(g.shape[axis])]
            tot = tot + torch.stack(per_unit)
        out.append(tot)
    return torch.stack(out)


@pytest.mark.parametrize("name, shape, kw", [
    ("fcn", (10,), {"widths": [16, 12]}),
    ("cnn", (3, 8, 8), {"width": 0.05}),
])
def test_unit_gradients_equal_autograd(name, shape, kw):
    torch.manual_seed(0)
    model = create_model(name, input_shape=shape, num_classes=3, **kw).double().eval()
    x, y = torch.randn(7, *shape, dtype=torch.float64), torch.randint(0, 3, (7,))
    params = unit_parameters(model, model.num_features)
    assert len(params) >= 2  # the head's columns and the incoming rows
    ref = _by_hand(model, x, y, params)
    sq, logits = unit_grad_sq(model, x, y, params)
    np.testing.assert_allclose(sq.numpy(), ref.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(per_sample_unit_grad_sq(model, x, y, params).numpy(), ref.numpy(), rtol=1e-9)
    assert logits.shape == (7, 3)


def test_resnet_units_include_the_last_normalisation():
    model = create_model("resnet18", input_shape=(3, 16, 16), num_classes=2)
    params = unit_parameters(model, model.num_features)
    assert params["net.fc.weight"] == 1
    assert {"net.layer4.1.conv2.weight", "net.layer4.1.bn2.weight", "net.layer4.1.bn2.bias"} <= set(params)


class Decomposable(nn.Module):
    """A bias-decomposable network (Definition 1) by construction: inputs (c, s) in {-1, 1}², label
    y = [c > 0], bias b = [s > 0]. Spurious units relu(±s); core units relu(±(c + s) - 1), active only
    on bias-aligned inputs, so on bias-conflicting ones the core subnetwork's gradient is exactly 0
    (Definition 1's condition), and the head (scaled by k) predicts by the spurious rule there."""

    def __init__(self, k: float):
        super().__init__()
        self.hidden = nn.Linear(2, 4)
        self.head = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[0., 1.], [0., -1.], [1., 1.], [-1., -1.]]))
            self.hidden.bias.copy_(torch.tensor([0., 0., -1., -1.]))
            self.head.weight.copy_(k * torch.tensor([[0., 1., 0., 1.], [1., 0., 1., 0.]]))
        self.num_features = 4

    def forward(self, x):
        return self.head(torch.relu(self.hidden(x)))


def _ratio(k: float) -> tuple[float, float]:
    model = Decomposable(k).double()
    x = torch.tensor([[c, s] for c in (-1., 1.) for s in (-1., 1.)] * 5, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    b = (x[:, 1] > 0).long()
    params = unit_parameters(model, 4)
    sq, _ = unit_grad_sq(model, x, y, params)
    kinds = np.array([1, 1, 0, 0])  # spurious, spurious, core, core
    sq = sq.numpy()
    spur, core = np.sqrt(sq[:, kinds == 1].sum(1)), np.sqrt(sq[:, kinds == 0].sum(1))
    bc = (y != b).numpy()
    assert np.all(core[bc] == 0)  # Definition 1: no core gradient on bias-conflicting samples
    return spur.sum() / core.sum(), float(np.exp(2 * k))


def test_ratio_grows_exponentially_with_the_logit_scale():
    """Eq. 8: Σ‖∇_s ℓ‖ / Σ‖∇_c ℓ‖ = O(e^{αk}); here α = 2 (the bias-aligned margin is 2k)."""
    ks = [1.0, 2.0, 3.0, 4.0, 5.0]
    r = np.array([_ratio(k)[0] for k in ks])
    assert np.all(np.diff(r) > 0)
    slopes = np.diff(np.log(r))
    assert slopes[-1] == pytest.approx(2.0, rel=0.1)  # log-linear in k at large k, slope α


def test_unit_kinds():
    csi, bsi = np.array([0.5, 0.1, 0, np.nan, 0.2]), np.array([0.1, 0.5, 0, np.nan, 0.2])
    np.testing.assert_array_equal(unit_kinds(csi, bsi), [0, 1, 2, 2, 1])


def test_probe_on_training_minibatches(tmp_path, tiny):
    """The probe on a real run: at each chosen checkpoint, the sums are those of the recorded
    minibatch recomputed from the checkpoint (checked at one checkpoint by hand)."""
    from lrscope.probe.runner import compute_run
    from lrscope.store.reader import open_run
    from lrscope.train.data import as_model_input, build_dataset
    from lrscope.train.loop import train_run
    from lrscope.train.restore import load_model

    cfg = tiny(lr=0.3, max_steps=80, stop="max-steps")
    path = train_run(cfg, tmp_path, progress=False).path
    res = compute_run(path, ["prop2_gradients", "representation"])
    assert res["prop2_gradients"].startswith("computed"), res
    ds = open_run(path)
    assert ds.prop2_grad_norm_sum.dims == ("prop2_checkpoint", "subnetwork", "minibatch_part")
    assert list(ds.subnetwork.values) == ["core", "spurious", "dead"]
    assert np.isfinite(ds.prop2_grad_ratio.values).all() and np.isfinite(ds.prop2_logit_norm.values).all()
    assert int(ds.prop2_units.isel(prop2_checkpoint=-1).sum()) == ds.sizes["neuron"]
    # by hand, at the second chosen checkpoint
    i = 1
    k = int(np.flatnonzero(ds.checkpoint_iteration.values == int(ds.prop2_iteration[i]))[0])
    step = int(ds.prop2_minibatch_iteration[i])
    ids = ds.batch_index.isel(iteration=step).values
    ids = ids[ids >= 0]
    bundle = build_dataset(cfg.dataset, seed=cfg.data_seed, bias_conflicting_ratio=cfg.bias_conflicting_ratio,
                           **cfg.data_options)
    model = load_model(ds, checkpoint=k).double()
    x = as_model_input(bundle.train.x[torch.from_numpy(ids.astype(np.int64))]).double()
    y = torch.from_numpy(ds.train_y.values[ids].astype(np.int64))
    params = unit_parameters(model, ds.sizes["neuron"])
    sq = _by_hand(model, x, y, params).numpy()
    s = int(np.searchsorted(ds.snapshot_iteration.values, int(ds.prop2_iteration[i]), side="right")) - 1
    kinds = unit_kinds(ds.csi.isel(snapshot=s).values, ds.bsi.isel(snapshot=s).values)
    bc = ds.train_y.values[ids] != ds.train_b.values[ids]
    spur, core = np.sqrt(sq[:, kinds == 1].sum(1)), np.sqrt(sq[:, kinds == 0].sum(1))
    got = ds.prop2_grad_norm_sum.isel(prop2_checkpoint=i)
    assert float(got.sel(subnetwork="spurious", minibatch_part="bias-conflicting")) == \
        pytest.approx(spur[bc].sum(), rel=1e-4)
    assert float(got.sel(subnetwork="core", minibatch_part="bias-aligned")) == pytest.approx(core[~bc].sum(), rel=1e-4)
    assert float(ds.prop2_grad_ratio[i]) == pytest.approx(spur.sum() / core.sum(), rel=1e-4)
