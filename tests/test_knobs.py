"""Training knobs beyond plain SGD: LR schedules, SAM/ASAM, the train-loss stop criterion,
each checked against a hand computation and through a real run recorded in its store."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import lrscope
from lrscope.cli.train import main as lrtrain
from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run
from lrscope.train.optim import sam_perturb

from conftest import tiny_config


def test_schedules_by_hand():
    t = np.array([0, 99, 100, 500, 999])
    c = RunConfig(lr=0.2, max_steps=1000, schedule="step", step_at=100, step_factor=0.1)
    np.testing.assert_allclose(c.lr_at(t), [0.2, 0.2, 0.02, 0.02, 0.02])
    c = RunConfig(lr=0.2, max_steps=1000, schedule="cosine")
    np.testing.assert_allclose(c.lr_at(t), 0.1 * (1 + np.cos(np.pi * t / 1000)))
    c = RunConfig(lr=0.2, max_steps=1000, schedule="wsd", warmup_steps=10, decay_fraction=0.2)
    assert c.lr_at(0) == pytest.approx(0.02) and c.lr_at(9) == pytest.approx(0.2)
    assert c.lr_at(500) == pytest.approx(0.2) and c.lr_at(800) == pytest.approx(0.2)
    assert c.lr_at(900) == pytest.approx(0.1) and c.lr_at(999) == pytest.approx(0.2 / 200)
    assert RunConfig(lr=0.3).lr_at(12345) == 0.3


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_perturbation_by_hand(adaptive):
    torch.manual_seed(0)
    ws = [torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True)]
    for w in ws:
        w.grad = torch.randn_like(w)
    before = [w.detach().clone() for w in ws]
    rho = 0.3
    t = [w.abs() if adaptive else torch.ones_like(w) for w in before]
    norm = torch.sqrt(sum(((ti * w.grad) ** 2).sum() for ti, w in zip(t, ws)))
    expect = [b + rho * ti**2 * w.grad / norm for b, ti, w in zip(before, t, ws)]
    ps, e = sam_perturb(ws, rho, adaptive)
    for w, ex in zip(ws, expect):
        torch.testing.assert_close(w.detach(), ex)
    torch._foreach_sub_([p.detach() for p in ps], e)
    for w, b in zip(ws, before):
        torch.testing.assert_close(w.detach(), b)


def test_knob_runs_are_recorded(tmp_path):
    sgd = lrscope.open_run(train_run(tiny_config(), tmp_path, progress=False).path)
    sam = lrscope.open_run(train_run(tiny_config(optimizer="sam", sam_rho=0.1), tmp_path, progress=False).path)
    assert sam.attrs["config"]["optimizer"] == "sam" and sam.attrs["status"] == "completed"
    # same init, same batches: the first step's logits agree, the SAM step changes the weights differently
    np.testing.assert_allclose(sam.batch_logits[0], sgd.batch_logits[0], rtol=1e-3)
    assert not np.allclose(sam.loss[1:], sgd.loss[1:])
    step = lrscope.open_run(train_run(tiny_config(schedule="step", step_at=60), tmp_path, progress=False).path)
    np.testing.assert_allclose(step.lr_schedule.values[:60], 0.1)
    np.testing.assert_allclose(step.lr_schedule.values[60:], 0.01, rtol=1e-6)


def test_train_loss_stop(tmp_path):
    res = CliRunner().invoke(lrtrain, [
        "run", "--lr", "0.5", "--stop", "train-loss=1e-3", "--max-steps", "6000", "--out", str(tmp_path),
        "--widths", "32,32", "--batch-size", "50", "--probe-size", "100", "--quiet", "--data-options",
        json.dumps({"n_train": 400, "n_test": 400, "core_bits": 3, "spurious_bits": 1, "noise_bits": 6})],
        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "train loss" in res.output and "< 0.001" in res.output
    ds = lrscope.open_run(next(tmp_path.glob("*.zarr")))
    assert ds.attrs["config"]["stop"] == "train-loss" and ds.attrs["config"]["stop_loss"] == 1e-3
    assert ds.sizes["iteration"] < 6000


def test_gpu_path_options_on_cpu(tmp_path):
    """bf16 autocast, channels-last and deterministic mode run (here on the CPU) and are recorded;
    channels-last and deterministic change how, not what: identical stores."""
    small = {"base": "digits", "n_train": 100, "n_test": 40}
    kw = dict(dataset="colored_mnist", model="cnn", model_options={"width": 0.125}, data_options=small,
              max_steps=6, snapshot_every=3, checkpoint_every=6, probe_size=20, batch_size=20, stop="max-steps")
    plain = lrscope.open_run(train_run(tiny_config(**kw), tmp_path / "a", progress=False).path)
    cl = lrscope.open_run(train_run(tiny_config(**kw, channels_last=True, deterministic=True), tmp_path / "b",
                                    progress=False).path)
    assert plain.attrs["run_id"] == cl.attrs["run_id"]  # execution settings are not part of the identity
    np.testing.assert_allclose(cl.loss.values, plain.loss.values, rtol=1e-4)
    bf = lrscope.open_run(train_run(tiny_config(**kw, precision="bf16"), tmp_path / "c", progress=False).path)
    assert bf.attrs["config"]["precision"] == "bf16" and bf.attrs["run_id"] != plain.attrs["run_id"]
    assert bf.test_logits.dtype == np.float32 and np.isfinite(bf.loss.values).all()
    np.testing.assert_allclose(bf.loss.values[0], plain.loss.values[0], rtol=0.05)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


def test_stop_check_schedule():
    from lrscope.train.recorder import may_have_converged

    acc = RunConfig(stop="train-acc")
    assert may_have_converged(acc, 0, 100, 100, 5.0)  # a perfect epoch checks at once
    assert not may_have_converged(acc, 0, 98, 100, 5.0)  # below 99%: never
    assert [may_have_converged(acc, e, 995, 1000, 5.0) for e in range(8)] == [False, False, False, True] * 2
    assert not may_have_converged(RunConfig(stop="max-steps"), 3, 100, 100, 0.0)
    loss = RunConfig(stop="train-loss", stop_loss=1e-3)
    assert not may_have_converged(loss, 3, 100, 100, 100 * 1e-2)  # running loss still too high
    assert may_have_converged(loss, 3, 100, 100, 100 * 1e-3)
