"""Supplement Figs. 29-30 (issue #19): PSGD-Kron (heavyball) with the WSD schedule trains and
resumes bit for bit; a batched sweep of kron runs falls back to sequential runs; the LR-drop
schedule; the model soup of a sweep's final weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_interrupted_runs import _arrays, check_finishes_and_resumes, tiny_cfg

import lrscope
from lrscope.errors import ConfigError
from lrscope.probe.soup import SHARED_INIT
from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run
from lrscope.train.sweep import load_spec

from conftest import tiny_config

PAPER = Path(__file__).resolve().parents[1] / "examples" / "paper"
TINY = dict(dataset="parity", model="fcn", widths=[32], data_options={"n_train": 200, "n_test": 64}, batch_size=20,
            probe_size=16, snapshot_every=20, checkpoint_every=20, model_options={}, data_root=None)


def miniature(cfg: RunConfig, **kw) -> RunConfig:
    """A spec's run on CPU-sized data: the knobs under study kept, the data, model and budget tiny."""
    d = cfg.to_dict()
    d.update(TINY)
    d.update(kw)
    return RunConfig(**d).validate()


def test_kron_wsd_spec_and_its_miniature_trains(tmp_path):
    configs = load_spec(PAPER / "fig29-colored_mnist-resnet50-kron_wsd.toml")
    assert {(c.dataset, c.model, c.optimizer, c.schedule, c.stop) for c in configs} == {
        ("colored_mnist", "resnet50", "kron", "wsd", "max-steps")}
    assert len({c.lr for c in configs}) >= 3 and {c.seed for c in configs} == {0, 1, 2}
    spec = configs[-1]  # the highest LR; its warm-up and decay scaled to 60 steps
    cfg = miniature(spec, lr=0.003, max_steps=60, warmup_steps=round(60 * spec.warmup_steps / spec.max_steps))
    r = train_run(cfg, tmp_path, progress=False)
    assert r.status == "completed", r.message
    ds = lrscope.open_run(r.path)
    loss = ds.loss.values
    assert np.mean(loss[-10:]) < 0.8 * np.mean(loss[:10]), loss
    lr = ds.lr_schedule.values  # warm-up, stable, then linear decay to 0 over the last 20% of the steps
    np.testing.assert_allclose(lr, cfg.lr_at(np.arange(60)))
    assert lr[0] < lr[10] == pytest.approx(0.003) and lr[-1] < 0.003 * 0.1 and lr[47] == pytest.approx(0.003)


def test_kron_resumes_bitwise(tmp_path, monkeypatch):
    check_finishes_and_resumes("fcn", "kron", tmp_path, monkeypatch)


def test_kron_is_not_batched_and_a_batched_sweep_trains_it_run_by_run(tmp_path):
    """`--batched` stacks SGD runs only (batch_key): kron runs fall back to the sequential path and
    write the stores sequential runs write (bitwise: CPU, deterministic)."""
    from click.testing import CliRunner

    from lrscope.cli.train import main as lrtrain
    from lrscope.train.batched import batch_key

    assert batch_key(tiny_config(optimizer="kron")) is None
    spec = tmp_path / "grid.toml"
    spec.write_text("[base]\ndataset='parity'\nwidths=[16]\nbatch_size=20\nprobe_size=16\nmax_steps=8\n"
                    "snapshot_every=4\ncheckpoint_every=4\noptimizer='kron'\nschedule='wsd'\nstop='max-steps'\n"
                    "data_options={n_train=64, n_test=64}\n[grid]\nlr=[0.001, 0.01]\nseed=[0]\n")
    res = CliRunner().invoke(lrtrain, ["sweep", str(spec), "--out", str(tmp_path / "b"), "--batched", "--quiet"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    stores = sorted((tmp_path / "b").glob("*.zarr"))
    assert len(stores) == 2
    for s in stores:
        ds = lrscope.open_run(s, probes=False)
        assert ds.attrs["status"] == "completed" and "batched_runs" not in ds.attrs["timings"]
        seq = train_run(RunConfig.from_dict(ds.attrs["config"]), tmp_path / "s", progress=False)
        a, b = _arrays(s), _arrays(seq.path)
        for k in a:
            if k.startswith(("log/", "checkpoints/", "snapshots/")):
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_kron_knobs_leave_other_run_ids_alone():
    assert tiny_config(weight_decay=0.01).run_id() == tiny_config(weight_decay=0.01, kron_beta=0.5).run_id()
    assert tiny_config(optimizer="kron").run_id() != tiny_config(optimizer="kron", kron_beta=0.5).run_id()
    with pytest.raises(ConfigError, match="kron_beta"):
        tiny_config(optimizer="kron", kron_beta=1.0).validate()


def test_lr_drop_spec_and_its_miniature(tmp_path):
    """Fig. 30 (left): LR 0.1 dropped to 0.001 at step S; S = 0 and S = max_steps are the constant
    references. The miniature trains S = 0, a middle S and max_steps on parity and reads back the
    per-step LR and the final unbiased accuracy."""
    configs = load_spec(PAPER / "fig30-corrupted_cifar10-resnet18-lr_drop.toml")
    assert {(c.dataset, c.model, c.lr, c.schedule, c.step_factor) for c in configs} == {
        ("corrupted_cifar10", "resnet18", 0.1, "step", 0.01)}
    at = sorted({c.step_at for c in configs})
    assert at[0] == 0 and at[-1] == configs[0].max_steps and 1000 in at
    out = tmp_path / "runs"
    for s in (0, 20, 40):
        cfg = miniature(configs[0], step_at=s, max_steps=40, stop="max-steps")
        assert train_run(cfg, out, progress=False).status == "completed"
    sw = lrscope.open_sweep(out, probes=False)
    for run in sw.run.values:
        r = sw.sel(run=run)
        s = int(r.step_at)
        lr = r.lr_schedule.values[:40]
        np.testing.assert_allclose(lr[:s], 0.1)
        np.testing.assert_allclose(lr[s:], 0.001)
    assert np.isfinite(lrscope.last_snapshot(sw.test_logits)).all()


# ----------------------------------------------------------------------------------- model soup
def test_soup_spec_soups_every_seed():
    configs = load_spec(PAPER / "fig30-colored_mnist-resnet18-soup.toml")
    lrs = {c.lr for c in configs}
    assert len(lrs) >= 2 and all({c.lr for c in configs if c.seed == s} == lrs for s in {c.seed for c in configs})
    assert len({json.dumps({k: c.to_dict()[k] for k in SHARED_INIT}, sort_keys=True) for c in configs}) == 1


@pytest.fixture(scope="module")
def soup_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("soup")
    for lr in (0.05, 0.5):
        train_run(tiny_config(lr=lr, seed=0, max_steps=80, stop="max-steps"), out, progress=False)
    return out


def test_model_soup_is_the_mean_of_its_ingredients(soup_sweep):
    import torch

    from lrscope.probe import model_soup
    from lrscope.probe.metrics import group_accuracy_np
    from lrscope.train.data import build_dataset

    sw = lrscope.open_sweep(soup_sweep, probes=False)
    out = model_soup(sw)
    assert list(out.lr.values) == [0.05, 0.5] and list(out.seed.values) == [0]
    assert int(out.n_ingredients.sel(seed=0)) == 2 and out.attrs["eval_split"] == "test"
    for v in out.data_vars:
        assert out[v].attrs["long_name"] and out[v].attrs["description"], v
    # the soup's weights: the element-wise mean of the ingredients' last checkpoints
    nets = [lrscope.load_model(s) for s in sw.attrs["stores"]]
    soup = lrscope.load_model(sw.attrs["stores"][0])
    soup.load_state_dict(lrscope.probe.soup_state([n.state_dict() for n in nets]))
    for name, w in soup.state_dict().items():
        want = np.mean([n.state_dict()[name].numpy().astype(np.float64) for n in nets], 0).astype(np.float32)
        np.testing.assert_array_equal(w.numpy(), want, err_msg=name)
        assert not np.array_equal(w.numpy(), nets[0].state_dict()[name].numpy())
    # its accuracy: a direct evaluation on the rebuilt test split
    cfg = sw.attrs["configs"][0]
    test = build_dataset("parity", seed=cfg["data_seed"], **cfg["data_options"]).test
    with torch.no_grad():
        pred = soup(test.x).argmax(1)
    correct = (pred == test.y).numpy()
    assert float(out.soup_unbiased_accuracy.sel(seed=0)) == pytest.approx(correct.mean())
    g = (test.y * 2 + test.b).numpy()
    assert float(out.soup_worst_group_accuracy.sel(seed=0)) == pytest.approx(
        min(correct[g == k].mean() for k in np.unique(g)))
    # each ingredient's: what its final snapshot's stored test logits say
    for s in sw.attrs["stores"]:
        ds = lrscope.open_run(s, probes=False)
        acc = group_accuracy_np(ds.test_logits.isel(snapshot=-1).values, ds.test_y.values, ds.test_b.values)
        lr = ds.attrs["config"]["lr"]
        assert float(out.ingredient_unbiased_accuracy.sel(seed=0, lr=lr)) == pytest.approx(
            float(acc["unbiased_accuracy"]))
        assert str(out.ingredient_run.sel(seed=0, lr=lr).values) == ds.attrs["run_id"]


def test_soup_cli_and_bad_input(soup_sweep, tmp_path):
    from click.testing import CliRunner

    from lrscope.cli.probe import main as lrprobe

    res = CliRunner().invoke(lrprobe, ["soup", str(soup_sweep)])
    assert res.exit_code == 0, res.output
    assert "soup" in res.output and "lr 0.05" in res.output and "lr 0.5" in res.output
    # one learning rate is no soup; an LR without a run; not numbers; runs of different initialisation
    train_run(tiny_config(lr=0.2, seed=0, max_steps=40, stop="max-steps", data_seed=1), tmp_path, progress=False)
    runs = sorted(str(p) for p in soup_sweep.glob("*.zarr"))
    before = sorted(p.name for p in soup_sweep.rglob("*"))
    for args, msg in [([runs[0]], "two or more learning rates"),
                      ([str(soup_sweep), "--lrs", "0.3"], "no finished run at lr 0.3"),
                      ([str(soup_sweep), "--lrs", "a,b"], "not a comma-separated list"),
                      ([runs[0], str(tmp_path)], "different architecture or initialisation: "
                                                   "parity-fcn-lr0.2")]:
        res = CliRunner().invoke(lrprobe, ["soup", *args])
        assert res.exit_code == 2, (args, res.output)
        assert msg in res.output and len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert sorted(p.name for p in soup_sweep.rglob("*")) == before


@pytest.mark.parametrize("model", ["cnn", pytest.param("resnet18", marks=pytest.mark.slow)])  # resnet18: ~140 s
def test_kron_resumes_bitwise_on_conv_nets(model, tmp_path, monkeypatch):
    """4-d convolution weights (Kronecker factors per dimension), BatchNorm's 1-d scales (diagonal)."""
    check_finishes_and_resumes(model, "kron", tmp_path, monkeypatch)


def test_soup_of_batchnorm_nets_recomputes_their_statistics(tmp_path):
    """ResNet18: the soup's BatchNorm running statistics are re-estimated on the training split
    (cumulative average over minibatches of the runs' batch size), not the ingredients' mean."""
    import torch

    from lrscope.probe import model_soup, soup_state
    from lrscope.probe.metrics import group_accuracy_np
    from lrscope.train.data import as_model_input, build_dataset

    for lr in (0.01, 0.1):
        cfg = tiny_cfg("resnet18", "sgd", lr=lr, max_steps=4)
        assert train_run(cfg, tmp_path, progress=False).status == "completed"
    sw = lrscope.open_sweep(tmp_path, probes=False)
    rec, avg = model_soup(sw), model_soup(sw, bn="average")
    assert rec.attrs["bn_statistics"] == "recomputed on the training split"
    assert avg.attrs["bn_statistics"] == "averaged over the ingredients"
    nets = [lrscope.load_model(s) for s in sw.attrs["stores"]]
    cfg = sw.attrs["configs"][0]
    data = build_dataset(cfg["dataset"], seed=cfg["data_seed"], **cfg["data_options"])
    for bn, out in (("average", avg), ("recompute", rec)):
        soup = lrscope.load_model(sw.attrs["stores"][0])
        soup.load_state_dict(soup_state([n.state_dict() for n in nets]))
        if bn == "recompute":
            for m in soup.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None
            soup.train()
            with torch.no_grad():
                for i in range(0, len(data.train.x), cfg["batch_size"]):
                    soup(as_model_input(data.train.x[i:i + cfg["batch_size"]]))
            soup.eval()
        with torch.no_grad():
            logits = soup(as_model_input(data.test.x)).numpy()
        acc = group_accuracy_np(logits, data.test.y.numpy(), data.test.b.numpy())
        assert float(out.soup_unbiased_accuracy.sel(seed=0)) == pytest.approx(float(acc["unbiased_accuracy"]))
        assert float(out.soup_worst_group_accuracy.sel(seed=0)) == pytest.approx(float(acc["worst_group_accuracy"]))
