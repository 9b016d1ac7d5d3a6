"""Batched sweeps (torch.func stacks): each run's store matches the store of the same run trained
alone, for the FCN (batched matmuls) and the CNN (vmap), including a diverging member."""


import numpy as np
import torch
from click.testing import CliRunner

import lrscope
from lrscope.cli.train import main as lrtrain
from lrscope.train.batched import batch_key, train_batched
from lrscope.train.loop import train_run

from conftest import tiny_config

COMPARE = ("loss", "accuracy", "bc_loss_sum", "ba_loss_sum", "grad_norm", "param_norm", "logit_norm", "lr_schedule",
           "batch_logits", "test_logits", "probe_logits", "probe_features", "train_logits")


def assert_close_stores(a, b, atol=1e-4):
    da, db = lrscope.open_run(a, probes=False), lrscope.open_run(b, probes=False)
    assert da.attrs["status"] == db.attrs["status"] and da.attrs["reason"] == db.attrs["reason"]
    assert da.attrs["config"] == db.attrs["config"]
    for v in ("batch_index", "snapshot_iteration", "checkpoint_iteration", "bc_count", "ba_count"):
        np.testing.assert_array_equal(da[v].values, db[v].values, err_msg=v)
    if da.attrs["status"] == "diverged":  # same iteration (in the reason); float noise blows up on the way
        return
    for v in COMPARE:
        if v in da:
            np.testing.assert_allclose(da[v].values.astype(float), db[v].values.astype(float), atol=atol, rtol=1e-3,
                                       err_msg=v)
    pa, pb = lrscope.load_model(da), lrscope.load_model(db)
    for (n, x), (_, y) in zip(pa.state_dict().items(), pb.state_dict().items()):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-3, msg=n)


def test_batched_sweep_matches_sequential(tmp_path):
    spec = tmp_path / "grid.toml"
    spec.write_text(
        "[base]\ndataset='parity'\nwidths=[32,32]\nbatch_size=50\nprobe_size=100\nmax_steps=160\n"
        "snapshot_every=40\ncheckpoint_every=80\nmomentum=0.5\nweight_decay=0.001\n"
        "data_options={n_train=400, n_test=300, core_bits=3, spurious_bits=1, noise_bits=6}\n"
        "[grid]\nlr=[0.05, 0.5, 200.0]\nseed=[0, 1]\n")
    res = CliRunner().invoke(lrtrain, ["sweep", str(spec), "--out", str(tmp_path / "b"), "--batched", "--quiet"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "6 runs" in res.output and "diverged" in res.output
    stores = sorted((tmp_path / "b").glob("*.zarr"))
    assert len(stores) == 6
    assert all("batched_runs" in lrscope.open_run(s, probes=False).attrs["timings"] for s in stores)
    res = CliRunner().invoke(lrtrain, ["sweep", str(spec), "--out", str(tmp_path / "s"), "--quiet"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for s in stores:
        assert_close_stores(s, tmp_path / "s" / s.name)
    # the stores are ordinary: a second batched pass finds them done
    res = CliRunner().invoke(lrtrain, ["sweep", str(spec), "--out", str(tmp_path / "b"), "--batched", "--quiet"])
    assert res.exit_code == 0 and "6 runs" in res.output


def test_batched_cnn_with_vmap_matches_sequential(tmp_path):
    kw = dict(dataset="colored_mnist", model="cnn", model_options={"width": 0.125}, stop="max-steps",
              data_options={"base": "digits", "n_train": 120, "n_test": 60}, max_steps=8, snapshot_every=4,
              checkpoint_every=8, probe_size=20, batch_size=20, loss="focal", l1=1e-4)
    configs = [tiny_config(lr=lr, seed=s, **kw) for lr, s in ((0.01, 0), (0.05, 1))]
    assert batch_key(configs[0]) == batch_key(configs[1]) is not None
    results = train_batched(configs, tmp_path / "b", progress=False)
    assert [r.status for r in results] == ["completed", "completed"]
    for c, r in zip(configs, results):
        seq = train_run(c, tmp_path / "s", progress=False)
        assert_close_stores(r.path, seq.path)


def test_not_batchable():
    assert batch_key(tiny_config(model="resnet18")) is None  # BatchNorm
    assert batch_key(tiny_config(optimizer="adam")) is None
    assert batch_key(tiny_config(lr=0.1)) == batch_key(tiny_config(lr=0.3, seed=4))
    assert batch_key(tiny_config(batch_size=10)) != batch_key(tiny_config())
