"""The public recording API (train/api.py): a loop of one's own recorded into the store lrtrain writes."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import lrscope
from lrscope.errors import ConfigError, DataError, ModelNotStored, StoreError
from lrscope.store import schema as S
from lrscope.store.compare import EXECUTION_ATTRS, differences
from lrscope.train.api import StepError
from lrscope.train.data import build_dataset
from lrscope.train.loop import train_run
from lrscope.train.optim import make_optimizer
from lrscope.train.restore import build_model
from lrscope.train.tapped import TappedNet

from conftest import TINY_DATA, tiny_config

KEYS = ("lr", "seed", "batch_size", "max_steps", "snapshot_every", "checkpoint_every", "probe_size", "stop",
        "widths", "data_options")
# what differs between lrtrain's store of a run and the API's store of the same run: the config (the
# API's has its model name and the user's keys), model_info (what recorded it), the run id
NAMING = EXECUTION_ATTRS + ("config", "model_info", "run_id")


def _same_run_by_hand(cfg, out, *, tap: bool, stop_at: int | None = None, resume: bool = False, **kw):
    """Train `cfg`'s run with a plain loop that takes lrtrain's steps (its model, optimizer and
    minibatch order), recording it through lrscope.Recorder."""
    bundle = build_dataset(cfg.dataset, seed=cfg.data_seed, **cfg.data_options)
    torch.manual_seed(cfg.seed)
    net = build_model(cfg, bundle.input_shape, bundle.num_classes)
    opt = make_optimizer(cfg, net.parameters())
    conf = {k: getattr(cfg, k) for k in KEYS}
    rec = lrscope.Recorder(out, model=net, features_at="head" if tap else None, optimizer=opt, data=bundle,
                           config=conf, name=kw.pop("name", "by-hand"), **kw)
    start = rec.resume() if resume else 0
    n, bs = len(bundle.train), cfg.batch_size
    spe = -(-n // bs)
    X, Y = bundle.train.x, bundle.train.y
    for t in range(start, cfg.max_steps if stop_at is None else stop_at):
        epoch, pos = divmod(t, spe)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        ids = perm[pos * bs:(pos + 1) * bs]
        logits = net(X[ids].float())
        loss = torch.nn.functional.cross_entropy(logits, Y[ids])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if rec.step(ids, logits):
            break
    return rec, net, opt, bundle


@pytest.mark.parametrize("tap", [False, True])
def test_a_recorded_loop_writes_the_store_lrtrain_writes(tmp_path, tap):
    """The same steps recorded through the API and by lrtrain: bitwise the same store (log,
    minibatch record, snapshots, checkpoints, optimizer state, labels), whether the network is
    handed over as a FeatureNet or tapped at its head by name."""
    cfg = tiny_config(stop="max-steps", max_steps=60, checkpoint_every=20)
    ref = train_run(cfg, tmp_path / "lrtrain", progress=False)
    rec, *_ = _same_run_by_hand(cfg, tmp_path / "api", tap=tap)
    assert rec.ended and rec.status == S.STATUS_COMPLETED and rec.iteration == 60
    assert differences(ref.path, rec.path, ignore_attrs=NAMING) == []
    ds = lrscope.open_run(rec.path)
    info = ds.attrs["model_info"]
    assert info["recorded_by"] == S.RECORDED_BY_API and info["features_at"] == ("head" if tap else None)
    assert info["parameter_names"] == [n for n, p in build_model(cfg, (10,), 2).named_parameters()]
    assert ds.attrs["config"]["model"] == "FCN" and ds.attrs["config"]["dataset"] == "parity"


def test_an_interrupted_recording_resumes_to_the_same_store(tmp_path):
    """A loop that dies between checkpoints (no close) resumes from the last one: `resume` loads
    the weights and optimizer state and returns its step; the finished store equals an
    uninterrupted one."""
    cfg = tiny_config(stop="max-steps", max_steps=60, checkpoint_every=20, momentum=0.9)
    whole, *_ = _same_run_by_hand(cfg, tmp_path / "whole", tap=True)
    cut, *_ = _same_run_by_hand(cfg, tmp_path / "cut", tap=True, stop_at=33)
    cut.lock.release()  # the process died: the kernel drops its lock
    attrs = lrscope.open_run(cut.path).attrs
    assert attrs["status"] == "running" and attrs["committed"]["checkpoint"] == 2  # 0 and 20
    again, *_ = _same_run_by_hand(cfg, tmp_path / "cut", tap=True, resume=True)
    assert again.status == S.STATUS_COMPLETED
    assert differences(whole.path, again.path, ignore_attrs=NAMING) == []
    # a finished run: resume says where it ended, step says it has ended
    done, *_ = _same_run_by_hand(cfg, tmp_path / "cut", tap=True, resume=True)
    assert done.iteration == 60 and done.step(torch.tensor([0]), torch.zeros(1, 2)) is True


def _small(tmp_path, name=None, **conf):
    bundle = build_dataset("parity", seed=0, **TINY_DATA)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    config = dict(batch_size=50, max_steps=30, snapshot_every=10, checkpoint_every=10, probe_size=50, **conf)
    rec = lrscope.Recorder(tmp_path, model=net, features_at="2", optimizer=opt, data=bundle, config=config, name=name)
    return rec, net, opt, bundle


def _train_step(net, opt, bundle, ids):
    logits = net(bundle.train.x[ids])
    loss = torch.nn.functional.cross_entropy(logits, bundle.train.y[ids])
    opt.zero_grad()
    loss.backward()
    opt.step()
    return logits, loss


@pytest.mark.parametrize("bad, message", [
    (lambda ids, lg: (ids[:-1], lg), "one position per logits row"),
    (lambda ids, lg: (ids, lg[:, :1]), r"shape \(batch, 2\)"),
    (lambda ids, lg: (ids.float(), lg), "integer positions"),
    (lambda ids, lg: (ids.numpy().astype(float), lg), "integer positions"),
    (lambda ids, lg: (ids, lg.detach().numpy()), "torch tensor"),
    (lambda ids, lg: (torch.arange(60), torch.zeros(60, 2)), "batch_size=50"),
])
def test_a_step_that_does_not_fit_is_one_line_and_changes_nothing(tmp_path, bad, message):
    rec, net, opt, bundle = _small(tmp_path)
    before = lrscope.open_run(rec.path).attrs["committed"]
    ids = torch.arange(50)
    logits, loss = _train_step(net, opt, bundle, ids)
    with pytest.raises(StepError, match=message) as e:
        rec.step(*bad(ids, logits), loss=loss)
    assert "\n" not in str(e.value)
    assert rec.iteration == 0 and lrscope.open_run(rec.path).attrs["committed"] == before
    for t in range(30):  # the recorder goes on as if the bad call had not been made
        ids = torch.arange(50) + 50 * (t % 8)
        logits, loss = _train_step(net, opt, bundle, ids)
        ended = rec.step(ids, logits, loss=loss, lr=0.1)
    assert ended and rec.status == S.STATUS_COMPLETED
    ds = lrscope.open_run(rec.path)
    assert ds.sizes["iteration"] == 30 and float(ds.lr_schedule[0]) == pytest.approx(0.1)


@pytest.mark.parametrize("shift", [1000, -1000])
def test_ids_out_of_range_are_caught_at_the_block_and_the_store_resumes(tmp_path, shift):
    rec, net, opt, bundle = _small(tmp_path)
    with pytest.raises(StepError, match=r"step 5: sample id -?\d+ is out of range") as e:
        for t in range(8):  # 8 steps: an epoch; step 5 hands over bad ids
            ids = torch.arange(50) + 50 * t
            logits, loss = _train_step(net, opt, bundle, ids)
            rec.step(ids + shift if t == 5 else ids, logits, loss=loss)
    assert "\n" not in str(e.value) and rec.iteration == 4  # the block from 4 (after the snapshot at 4) is dropped
    attrs = lrscope.open_run(rec.path).attrs
    assert attrs["status"] == "running" and attrs["committed"]["checkpoint"] == 1
    with pytest.raises(lrscope.LrscopeError, match="make a new Recorder"):
        rec.step(ids, logits)
    again, *_ = _small(tmp_path)
    assert again.resume() == 0
    again.close(finished=False)


def test_bad_lr_and_loss_are_refused(tmp_path):
    rec, net, opt, bundle = _small(tmp_path)
    ids = torch.arange(50)
    logits, loss = _train_step(net, opt, bundle, ids)
    for kw, message in ((dict(lr=float("nan")), "lr must be"), (dict(lr=-1.0), "lr must be"),
                        (dict(loss=torch.ones(3)), "scalar loss"), (dict(loss="x"), "loss must be")):
        with pytest.raises(StepError, match=message):
            rec.step(ids, logits, **kw)
    rec.close()


def test_divergence_marks_the_run_diverged(tmp_path):
    rec, net, opt, bundle = _small(tmp_path)
    for t in range(30):
        ids = torch.arange(50) + 50 * (t % 8)
        logits, _ = _train_step(net, opt, bundle, ids)
        loss = torch.tensor(float("nan")) if t == 13 else None
        if rec.step(ids, logits, loss=loss):
            break
    # found at the next recording point (the end of the epoch: 8 steps of 50 of 400 samples), as lrtrain
    # finds it; the log ends at the step that diverged
    assert t == 15 and rec.status == S.STATUS_DIVERGED
    ds = lrscope.open_run(rec.path)
    assert ds.attrs["status"] == "diverged" and ds.attrs["diverged_at"] == 13 and ds.sizes["iteration"] == 14
    assert rec.step(ids, logits) is True  # ended: stepping on is a no-op that says so


def test_nonfinite_logits_diverge_even_with_a_finite_loss(tmp_path):
    rec, net, opt, bundle = _small(tmp_path)
    ids = torch.arange(50)
    logits, loss = _train_step(net, opt, bundle, ids)
    logits = logits.detach().clone()
    logits[3, 0] = float("inf")
    rec.step(ids, logits, loss=loss)
    rec.close()
    assert rec.status == S.STATUS_DIVERGED


@pytest.mark.parametrize("steps", [9, 10])
def test_a_loop_that_ends_early_closes_the_run_and_a_with_block_too(tmp_path, steps):
    """Ending at 9 takes the final snapshot and checkpoint there; ending at 10, a snapshot and
    checkpoint iteration, keeps the ones written at 10 (iterations stay distinct; that snapshot
    has the test logits, not the train logits a final one adds)."""
    rec, net, opt, bundle = _small(tmp_path)
    with rec:
        for t in range(steps):
            ids = torch.arange(50) + 50 * (t % 8)
            rec.step(ids, _train_step(net, opt, bundle, ids)[0])
    ds = lrscope.open_run(rec.path)
    assert ds.attrs["status"] == "completed" and f"the loop ended at iteration {steps}" in ds.attrs["reason"]
    assert list(ds.snapshot_iteration.values) == [0, 1, 2, 4, 8, steps]
    assert list(ds.checkpoint_iteration.values) == [0, steps]
    assert bool(ds.test_evaluated[-1]) and bool(ds.train_evaluated[-1]) == (steps == 9)


def test_an_error_in_the_loop_leaves_the_store_resumable(tmp_path):
    rec, net, opt, bundle = _small(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with rec:
            for t in range(12):
                ids = torch.arange(50) + 50 * (t % 8)
                rec.step(ids, _train_step(net, opt, bundle, ids)[0])
            raise ZeroDivisionError("the loop broke")
    attrs = lrscope.open_run(rec.path).attrs
    assert attrs["status"] == "failed" and "ZeroDivisionError" in attrs["reason"]
    rec2, *_ = _small(tmp_path)
    with pytest.raises(lrscope.LrscopeError, match="resume"):
        rec2.step(torch.arange(50), torch.zeros(50, 2))
    assert rec2.resume() == 10  # its last checkpoint
    rec2.close(finished=False)
    assert lrscope.open_run(rec2.path).attrs["status"] == "running"


def test_the_store_is_locked_while_recording(tmp_path):
    from lrscope.store.lock import RunLocked

    rec, *_ = _small(tmp_path)
    with pytest.raises(RunLocked):
        _small(tmp_path)
    rec.close()


def test_config_is_checked_before_anything_is_written(tmp_path):
    bundle = build_dataset("parity", seed=0, **TINY_DATA)
    net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    base = dict(batch_size=50, max_steps=30)
    cases = [(dict(max_steps=30), "config needs batch_size"), ({**base, "lr": -1.0}, "learning rate"),
             ({**base, "device": "cuda"}, "does not apply"), ({**base, "width": float("nan")}, "JSON"),
             ({**base, "stop": "sometimes"}, "unknown stop")]
    for config, message in cases:
        with pytest.raises(ConfigError, match=message):
            lrscope.Recorder(tmp_path / "out", model=net, features_at="2", optimizer=opt, data=bundle, config=config)
    for kw, message in ((dict(features_at="9"), "no module of that name"), (dict(features_at=None), "features_at"),
                        (dict(features_at="0"), "last step")):
        with pytest.raises(ConfigError, match=message):
            lrscope.Recorder(tmp_path / "out", model=net, optimizer=opt, data=bundle, config=base, **kw)
    with pytest.raises(DataError, match="DataBundle"):
        lrscope.Recorder(tmp_path / "out", model=net, features_at="2", optimizer=opt, data=[1, 2], config=base)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_user_config_is_kept_and_a_different_one_refused(tmp_path):
    rec, *_ = _small(tmp_path, width=16, augment={"flip": True})
    cfg = lrscope.open_run(rec.path).attrs["config"]
    assert cfg["width"] == 16 and cfg["augment"] == {"flip": True} and cfg["optimizer"] == "sgd"
    assert cfg["lr"] == 0.1 and cfg["stop"] == "max-steps" and cfg["momentum"] == 0.0
    rec.close()
    with pytest.raises(ConfigError, match="different config"):
        _small(tmp_path, width=16, augment={"flip": False}, name=rec.path.stem)


def test_bundle_from_arrays_checks_its_input():
    x, y = np.random.default_rng(0).random((20, 3)), np.arange(20) % 2
    b = bundle_ok = lrscope.bundle_from_arrays(train=(x, y, None), test=(x[:5], y[:5], None), name="toy")
    assert bundle_ok.has_bias is False and bundle_ok.num_classes == 2 and bundle_ok.train.x.dtype == torch.float32
    assert torch.equal(b.train.b, b.train.y)
    b = lrscope.bundle_from_arrays(train=(torch.from_numpy(x), torch.from_numpy(y), y[::-1].copy()),
                                   test=(x[:5], y[:5], y[:5]), name="toy")
    assert b.has_bias and b.num_bias == 2 and b.input_shape == (3,)
    cases = [(dict(train=(x, y[:-1], None)), "expected 20 labels"),
             (dict(train=(x, y.astype(float), None)), "integers"),
             (dict(train=(x, -y, None)), ">= 0"),
             (dict(train=(x[:, :2], y, None)), "differ"),
             (dict(train=(x, y, y)), "both train and test"),
             (dict(train=(x.astype(np.int32), y, None)), "uint8"),
             (dict(train=x), "tuple"),
             (dict(train=(x * np.nan, y, None)), "finite"),
             (dict(num_classes=1), "num_classes")]
    for kw, message in cases:
        args = dict(train=(x, y, None), test=(x[:5], y[:5], None), name="toy")
        args.update(kw)
        with pytest.raises(DataError, match=message) as e:
            lrscope.bundle_from_arrays(**args)
        assert "\n" not in str(e.value)


def test_the_network_comes_back_into_the_users_class(tmp_path):
    rec, net, opt, bundle = _small(tmp_path)
    for t in range(30):
        ids = torch.arange(50) + 50 * (t % 8)
        rec.step(ids, _train_step(net, opt, bundle, ids)[0])
    ds = lrscope.open_run(rec.path)
    with pytest.raises(ModelNotStored, match="into=net"):
        lrscope.load_model(ds)
    fresh = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    back = lrscope.load_model(ds, into=fresh)
    assert back is fresh and all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                                   net.state_dict().values()))
    with pytest.raises(StoreError, match="lacks parameter"):
        lrscope.load_model(ds, into=torch.nn.Linear(10, 2))


def test_probes_compute_on_a_recorded_loop_and_say_what_is_not_defined(tmp_path):
    from lrscope.probe.runner import compute_run

    rec, net, opt, bundle = _small(tmp_path)
    for t in range(30):
        ids = torch.arange(50) + 50 * (t % 8)
        rec.step(ids, _train_step(net, opt, bundle, ids)[0])
    out = compute_run(rec.path)
    assert out["pruning"].startswith("not defined") and "into=net" in out["pruning"]
    assert out["attributions"].startswith("not defined")
    computed = {n for n, v in out.items() if v.startswith("computed")}
    assert {"accuracy", "loss_ratio", "compressibility", "representation", "dynamics"} <= computed
    ds = lrscope.open_run(rec.path)
    # parameter compressibility read from the stored weight matrices of the user's network
    assert json.loads(ds.layer_param_compressibility.attrs["layers"]) == ["0.weight", "2.weight"]
    assert np.isfinite(float(ds.param_compressibility))


def test_signed_features_of_a_users_network_are_made_non_negative_for_selectivity():
    import xarray as xr

    from lrscope.probe.runner import selective_representation

    f = xr.DataArray(np.array([[1.0, -2.0], [0.5, 3.0]]), dims=["probe_sample", "neuron"])
    assert "max(0" in selective_representation(f, None).attrs["representation"]
    assert float(selective_representation(f, None).min()) == 0.0
    assert "post-ReLU" in selective_representation(abs(f), None).attrs["representation"]


def test_a_tapped_net_keeps_the_users_state_dict_names():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    assert list(TappedNet(net, "2").state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_snapshots_run_in_eval_mode_and_give_the_model_back_in_train_mode(tmp_path):
    """A network with BatchNorm and Dropout: lrscope's own forward passes (snapshots at 0, 1, 2,
    4, 8, 10) run it in eval mode, so its running statistics are the loop's alone, and hand it
    back in train mode; checkpoints hold its buffers too."""
    bundle = build_dataset("parity", seed=0, **TINY_DATA)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                              torch.nn.Dropout(0.1), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    bn = net[1]
    with lrscope.Recorder(tmp_path, model=net, features_at="4", optimizer=opt, data=bundle,
                          config=dict(batch_size=50, max_steps=12, snapshot_every=10, checkpoint_every=10)) as rec:
        tracked = int(bn.num_batches_tracked)
        for t in range(12):
            ids = torch.arange(50) + 50 * (t % 8)
            rec.step(ids, _train_step(net, opt, bundle, ids)[0])
            assert net.training
    assert int(bn.num_batches_tracked) == tracked + 12  # only the loop's 12 batches updated the statistics
    ds = lrscope.open_run(rec.path)
    assert ds.attrs["config"]["optimizer"] == "adam"
    back = lrscope.load_model(ds, into=copy.deepcopy(net))
    assert torch.equal(back[1].running_mean, bn.running_mean) and not back.training
    assert "1.running_mean" not in ds.attrs["model_info"]["parameter_names"]
