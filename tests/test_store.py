"""The run store: layout, lazy reading, committed prefixes, model reconstruction."""

import json

import numpy as np
import pytest
import torch
import zarr

import lrscope
from lrscope.errors import StoreError
from lrscope.store import schema as S
from lrscope.train.data import as_model_input
from lrscope.train.loop import train_run


def test_run_store_layout_and_open_run(tmp_path, tiny):
    cfg = tiny()
    r = train_run(cfg, tmp_path, progress=False)
    assert r.path == tmp_path / f"{cfg.run_id()}.zarr"
    ds = lrscope.open_run(r.path)
    assert ds.attrs["status"] in ("completed",)
    assert ds.attrs["config"]["lr"] == 0.1
    n_it = ds.sizes["iteration"]
    assert n_it == r.iterations > 0
    # snapshots: 0, 1, 2, 4, 8, 16 (log-spaced), every 20, and the final one
    it = ds.snapshot_iteration.values
    assert list(it[:6]) == [0, 1, 2, 4, 8, 16] and it[-1] == n_it and np.all(np.diff(it) > 0)
    assert ds.test_logits.dims == ("snapshot", "test_sample", "class")
    assert ds.probe_features.sizes["neuron"] == 32
    assert ds.sizes["probe_sample"] == 100
    # probe subset is group balanced (4 groups x 25)
    assert sorted(np.bincount(ds.probe_group.values).tolist()) == [25, 25, 25, 25]
    # labels: train y/b with exactly 10% bias-conflicting
    assert ds.train_bias_conflicting.values.mean() == pytest.approx(0.1)
    # log rows are consistent: counts add up to the batch size, bc sums are parts of the loss
    counts = (ds.bc_count + ds.ba_count).values
    assert np.all(counts == 50)
    total = (ds.bc_loss_sum + ds.ba_loss_sum).values / 50
    np.testing.assert_allclose(total, ds.loss.values, rtol=1e-4)
    # every train sample is seen exactly once per epoch (8 steps of 50)
    first_epoch = ds.batch_index.values[:8].ravel()
    assert sorted(first_epoch.tolist()) == list(range(400))
    assert ds.checkpoint_iteration.values[0] == 0 and ds.checkpoint_iteration.values[-1] == n_it


def test_load_model_reproduces_stored_logits(tmp_path, tiny):
    r = train_run(tiny(), tmp_path, progress=False)
    ds = lrscope.open_run(r.path)
    net = lrscope.load_model(ds, checkpoint=-1)
    x = torch.from_numpy(np.asarray(lrscope.open_run(r.path).probe_inputs.values))
    from lrscope.train.data import build_dataset

    cfg = ds.attrs["config"]
    bundle = build_dataset("parity", seed=cfg["data_seed"], **cfg["data_options"])
    with torch.inference_mode():
        logits = net(as_model_input(bundle.test.x)).numpy()
    np.testing.assert_allclose(logits, ds.test_logits.isel(snapshot=-1).values, rtol=1e-5, atol=1e-5)
    # the stored probe inputs are the test inputs at the stored positions
    np.testing.assert_array_equal(x.numpy(), bundle.test.x.numpy()[ds.probe_test_index.values])
    with torch.inference_mode():
        feats = net.forward_features(x).numpy()
    np.testing.assert_allclose(feats, ds.probe_features.isel(snapshot=-1).values, rtol=1e-5, atol=1e-5)


def test_readers_trim_to_committed_lengths(tmp_path, tiny):
    r = train_run(tiny(), tmp_path, progress=False)
    root = zarr.open_group(str(r.path), mode="r+")
    com = root.attrs[S.ATTR_COMMITTED]
    # simulate a crash after data was appended but before the commit: extra rows beyond committed
    arr = root["log/loss"]
    arr.resize((com["iteration"] + 7,))
    snaps = root["snapshots/test_logits"]
    snaps.resize((com["snapshot"] + 1, *snaps.shape[1:]))
    ds = lrscope.open_run(r.path)
    assert ds.sizes["iteration"] == com["iteration"]
    assert ds.sizes["snapshot"] == com["snapshot"]


def test_store_has_no_pickle_and_only_plain_dtypes(tmp_path, tiny):
    r = train_run(tiny(), tmp_path, progress=False)
    for meta in r.path.rglob("zarr.json"):
        text = meta.read_text()
        assert "pickle" not in text.lower()
        m = json.loads(text)
        if m.get("node_type") == "array":
            assert m["data_type"] in ("bool", "int32", "int64", "float16", "float32", "float64", "uint8")


def test_open_run_errors(tmp_path):
    with pytest.raises(StoreError, match="no such file"):
        lrscope.open_run(tmp_path / "missing.zarr")
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w")
    with pytest.raises(StoreError, match="not an lrscope run store"):
        lrscope.open_run(plain)


def test_newer_schema_is_refused(tmp_path, tiny):
    r = train_run(tiny(), tmp_path, progress=False)
    zarr.open_group(str(r.path), mode="r+").attrs[S.ATTR_SCHEMA] = S.SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match="newer than this lrscope"):
        lrscope.open_run(r.path)


def test_open_sweep_coords(tiny_sweep):
    sw = lrscope.open_sweep(tiny_sweep)
    assert sw.sizes["run"] == 4
    assert sorted(set(sw.lr.values.tolist())) == [0.02, 0.5]
    assert set(sw.seed.values.tolist()) == {0, 1}
    assert "snapshot_iteration" in sw.coords and sw.snapshot_iteration.dims == ("run", "snapshot")
    assert (sw.status.values == "completed").all()
    means = sw.prunability.groupby("lr").mean()
    assert means.sizes["lr"] == 2
    g = lrscope.open_sweep(str(tiny_sweep / "*lr0.5*"))
    assert g.sizes["run"] == 2


def test_open_sweep_stacks_runs_as_xarray_concat_would(tiny_sweep, tmp_path, monkeypatch):
    """The one-stack-per-variable path gives xr.concat's Dataset (values, coords, chunks), also
    with a shorter run padded in and with a run lacking the probe variables."""
    import shutil

    import xarray as xr

    from lrscope.probe.runner import compute_paths
    from lrscope.store import reader as R

    from conftest import tiny_config

    for store in tiny_sweep.glob("*.zarr"):
        shutil.copytree(store, tmp_path / store.name)
    train_run(tiny_config(lr=0.1, max_steps=100, stop="max-steps"), tmp_path, progress=False)
    compute_paths(tmp_path, progress=False)
    stack, used = R._stack_runs, []
    monkeypatch.setattr(R, "_stack_runs", lambda d: used.append(stack(d)) or used[-1])
    fast = lrscope.open_sweep(tmp_path)
    assert used[-1] is not None and fast.sizes["run"] == 5
    monkeypatch.setattr(R, "_stack_runs", lambda d: None)
    slow = lrscope.open_sweep(tmp_path)
    xr.testing.assert_identical(fast, slow)
    assert all(fast[v].chunks == slow[v].chunks for v in fast.variables)
    # a run without probes lacks their variables: those go through xr.concat, NaN for that run
    train_run(tiny_config(lr=0.2, max_steps=60, stop="max-steps"), tmp_path, progress=False)
    slow = lrscope.open_sweep(tmp_path)
    monkeypatch.setattr(R, "_stack_runs", lambda d: used.append(stack(d)) or used[-1])
    fast = lrscope.open_sweep(tmp_path)
    assert used[-1] is not None and fast.sizes["run"] == 6
    xr.testing.assert_identical(fast, slow)
    assert np.isnan(fast.prunability.values).sum() == 1


def test_open_sweep_fast_path_matches_open_run(tiny_sweep):
    """Runs after the first reuse its array metadata: their values must be their own."""
    sw = lrscope.open_sweep(tiny_sweep)
    for i, store in enumerate(sw.attrs["stores"]):
        ds = lrscope.open_run(store)
        n = ds.sizes["iteration"]
        np.testing.assert_array_equal(sw.loss.isel(run=i, iteration=slice(0, n)).values, ds.loss.values)
        np.testing.assert_array_equal(sw.test_logits.isel(run=i, snapshot=slice(0, ds.sizes["snapshot"])).values,
                                      ds.test_logits.values)
        np.testing.assert_array_equal(sw.snapshot_iteration.isel(run=i).values[:ds.sizes["snapshot"]],
                                      ds.snapshot_iteration.values)
        assert float(sw.prunability.isel(run=i)) == float(ds.prunability)


def test_every_commit_is_one_metadata_write(tmp_path, tiny, monkeypatch):
    """zarr's attrs.update() rewrites zarr.json once per key: a commit made that way could be cut
    between its committed lengths and its status (a finished run then resumed at its end and
    recorded its last snapshot twice). Each lrscope attribute write is one write of zarr.json,
    carrying every key; a finished store's arrays are cut to length before its last commit."""
    from lrscope.store.writer import RunWriter

    writes = []
    real_set = zarr.storage.LocalStore.set

    async def recording_set(self, key, value):
        if key.endswith("zarr.json"):
            writes.append((key, json.loads(value.to_bytes())))
        return await real_set(self, key, value)

    r = train_run(tiny(max_steps=40), tmp_path, progress=False)
    zarr.open_group(str(r.path), mode="r+").attrs.update({"status": "running"})  # reopened as unfinished
    monkeypatch.setattr(zarr.storage.LocalStore, "set", recording_set)
    w = RunWriter.resume(r.path)
    root_writes = [a for k, a in writes if k == "zarr.json"]
    assert len(root_writes) == 1 and root_writes[0]["attributes"]["reason"].startswith("resumed from")
    writes.clear()
    w.commit(status="running", reason="a test commit", extra_key=1)
    assert [k for k, _ in writes] == ["zarr.json"]
    attrs = writes[0][1]["attributes"]
    assert attrs["reason"] == "a test commit" and attrs["extra_key"] == 1 and "committed" in attrs
    writes.clear()
    w.finish("completed", "done")
    root_writes = [i for i, (k, _) in enumerate(writes) if k == "zarr.json"]
    assert root_writes == [len(writes) - 1]  # the commit is the finish's last write: arrays first
    assert writes[-1][1]["attributes"]["status"] == "completed"
