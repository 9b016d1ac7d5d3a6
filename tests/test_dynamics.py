"""The `dynamics` probe (per-sample training dynamics from the minibatch log) against a
brute-force loop over the log rows, on real runs: a healthy one, one streamed in many small
blocks, and a diverged one."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest

import lrscope
from lrscope.probe import last_mistake, sample_dynamics
from lrscope.probe.runner import compute_run
from lrscope.store.reader import read_probe
from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run

PER_SAMPLE = ("presentations", "predictions", "confidence", "variability", "correctness", "forgetting_events",
              "first_learned", "last_mistake", "never_learned", "unforgettable")


def small_config(**kw) -> RunConfig:
    base = {"dataset": "parity", "model": "fcn", "widths": [16], "lr": 0.1, "max_steps": 300, "stop": "max-steps",
            "probe_size": 40, "data_options": {"n_train": 400, "n_test": 400}}
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """300 steps of 100 samples: 75 epochs of 4 steps, two stored chunks of the log (256 + 44 rows)."""
    return train_run(small_config(), tmp_path_factory.mktemp("dyn"), progress=False).path


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    return train_run(small_config(lr=1e6), tmp_path_factory.mktemp("dyn-div"), progress=False).path


def brute_force(index: np.ndarray, logits: np.ndarray, y: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The definitions, one log row and one slot at a time, in plain Python (float64 softmax)."""
    pres = [0] * n
    probs: list[list[float]] = [[] for _ in range(n)]
    right: list[list[bool]] = [[] for _ in range(n)]
    when: list[list[int]] = [[] for _ in range(n)]
    for t in range(index.shape[0]):
        for k in range(index.shape[1]):
            s = int(index[t, k])
            if s < 0:
                continue
            pres[s] += 1
            z = [float(v) for v in logits[t, k]]
            if not all(math.isfinite(v) for v in z):
                continue  # no prediction
            m = max(z)
            e = [math.exp(v - m) for v in z]
            probs[s].append(e[int(y[s])] / sum(e))
            right[s].append(z.index(m) == int(y[s]))
            when[s].append(t)
    out = {k: [] for k in PER_SAMPLE}
    for s in range(n):
        p, c, t = probs[s], right[s], when[s]
        mean = sum(p) / len(p) if p else math.nan
        out["presentations"].append(pres[s])
        out["predictions"].append(len(p))
        out["confidence"].append(mean)
        out["variability"].append(math.sqrt(sum((q - mean) ** 2 for q in p) / len(p)) if p else math.nan)
        out["correctness"].append(sum(c) / len(c) if c else math.nan)
        out["forgetting_events"].append(sum(1 for a, b in itertools.pairwise(c) if a and not b))
        first = next((ti for ci, ti in zip(c, t) if ci), -1)
        out["first_learned"].append(first)
        out["last_mistake"].append(max((ti for ci, ti in zip(c, t) if not ci), default=-1))
        out["never_learned"].append(first == -1)
        out["unforgettable"].append(first != -1 and out["forgetting_events"][-1] == 0)
    res = {k: np.asarray(v) for k, v in out.items()}
    res["_events"] = (probs, right, when)
    return res


def check_per_sample(got: dict, want: dict, *, float_tol: float = 2e-6) -> None:
    for k in PER_SAMPLE:
        g, w = np.asarray(got[k]), want[k]
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=float_tol, atol=float_tol, equal_nan=True, err_msg=k)
        else:
            np.testing.assert_array_equal(g, w, err_msg=k)


def _log(path):
    ds = lrscope.open_run(path)
    return ds, ds.batch_index.values, ds.batch_logits.values, ds.train_y.values, ds.sizes["train_sample"]


def test_probe_matches_brute_force(run):
    out = compute_run(run, ["dynamics"])
    assert out["dynamics"].startswith("computed"), out
    res = read_probe(run, "dynamics")
    ds, index, logits, y, n = _log(run)
    want = brute_force(index, logits, y, n)
    check_per_sample({k: res[f"dyn_{k}"].values for k in PER_SAMPLE}, want)
    # the run exercises every branch: forgetting, never-learned, never-wrong and unforgettable samples
    assert want["forgetting_events"].max() >= 2
    assert want["never_learned"].any() and (~want["never_learned"]).any()
    assert (want["last_mistake"] == -1).any() and want["unforgettable"].any()
    assert (want["presentations"] == 75).all()  # once per epoch: 300 steps, 4 steps an epoch
    # the earlier learning-order metric agrees where every logit is finite
    np.testing.assert_array_equal(res.dyn_last_mistake.values,
                                  last_mistake(index, logits, y, n_samples=n).values)

    # summaries: plain means / fractions / medians of the brute-force values over each subset and group
    bc = ds.train_bias_conflicting.values
    grp = ds.train_group.values
    assert list(res.subset.values) == ["all", "bias_aligned", "bias_conflicting"]
    assert list(res.group.values) == list(np.unique(grp))
    sets = {("subset", "all"): np.ones(n, bool), ("subset", "bias_aligned"): ~bc, ("subset", "bias_conflicting"): bc}
    sets.update({("group", g): grp == g for g in np.unique(grp)})
    for (dim, label), mask in sets.items():
        m = mask & (want["predictions"] > 0)
        row = res.sel({dim: label})
        assert int(row[f"dyn_{dim}_samples"]) == m.sum()
        for k in ("confidence", "variability", "correctness", "forgetting_events", "never_learned", "unforgettable"):
            np.testing.assert_allclose(float(row[f"dyn_{dim}_{k}"]), want[k][m].astype(float).mean(), rtol=1e-6,
                                       err_msg=f"{dim}={label} {k}")
        for k in ("first_learned", "last_mistake"):
            v = want[k][m & (want[k] >= 0)]
            np.testing.assert_allclose(float(row[f"dyn_{dim}_{k}_median"]), np.median(v) if len(v) else np.nan,
                                       err_msg=f"{dim}={label} {k}")

    # per-epoch curves
    spe = math.ceil(n / index.shape[1])
    assert res.attrs["steps_per_epoch"] == spe == 4
    n_ep = math.ceil(index.shape[0] / spe)
    cnt, cor, con = np.zeros((n_ep, 3)), np.zeros((n_ep, 3)), np.zeros((n_ep, 3))
    probs, right, when = want["_events"]
    for s in range(n):
        for p, c, t in zip(probs[s], right[s], when[s]):
            for col in (0, 2 if bc[s] else 1):
                cnt[t // spe, col] += 1
                cor[t // spe, col] += c
                con[t // spe, col] += p
    np.testing.assert_array_equal(res.dyn_epoch_predictions.values, cnt)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(res.dyn_epoch_correct.values, cor / cnt, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(res.dyn_epoch_confidence.values, con / cnt, rtol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(res.dyn_epoch_first_iteration.values, np.arange(n_ep) * spe)

    # labelled and documented; merged into the run's Dataset beside the other probes
    for name, v in res.data_vars.items():
        assert v.attrs.get("long_name") and v.attrs.get("description"), name
    assert res.dyn_first_learned.attrs["units"] == "iteration"
    assert "dyn_confidence" in lrscope.open_run(run)


def test_streaming_in_small_blocks(run):
    """Blocks far smaller than the run (and than an epoch) give the same result, from dask or numpy."""
    ds, index, logits, y, n = _log(run)
    full = sample_dynamics(ds.batch_index, ds.batch_logits, y, n)
    assert len(ds.batch_logits.data.chunks[0]) == 2  # two stored chunks: the read-ahead path
    for rows in (1, 3, 7, 100):
        for bi, bl in ((ds.batch_index, ds.batch_logits), (index, logits)):
            part = sample_dynamics(bi, bl, y, n, block_rows=rows, bias_conflicting=ds.train_bias_conflicting.values)
            check_per_sample(part, {k: np.asarray(full[k]) for k in PER_SAMPLE}, float_tol=1e-9)
    # one "epoch" for the whole run: every sample repeats in a block, the general (sorted) path
    for rows in (5, 256):
        part = sample_dynamics(index, logits, y, n, steps_per_epoch=10**6, block_rows=rows)
        check_per_sample(part, {k: np.asarray(full[k]) for k in PER_SAMPLE}, float_tol=1e-9)


def test_hand_made_log():
    """A log written by hand: sample 0 correct, wrong, (non-finite), correct, wrong; sample 1 never
    right; sample 2 never wrong; slot -1 empty."""
    nan = np.nan
    index = np.array([[0, 1], [2, 0], [0, -1], [1, 0], [0, 2]])
    right, wrong = [0.0, 5.0], [5.0, 0.0]  # y = 1 for samples 0 and 2, y = 0 for sample 1
    logits = np.array([[right, right], [right, wrong], [[nan, 1.0], [0, 0]], [right, right], [wrong, right]],
                      dtype=np.float16)
    y = np.array([1, 0, 1])
    for rows in (1, 2, 5):
        r = sample_dynamics(index, logits, y, 3, steps_per_epoch=2, block_rows=rows)
        np.testing.assert_array_equal(r["presentations"], [5, 2, 2])
        np.testing.assert_array_equal(r["predictions"], [4, 2, 2])
        np.testing.assert_array_equal(r["forgetting_events"], [2, 0, 0])
        np.testing.assert_array_equal(r["first_learned"], [0, -1, 1])
        np.testing.assert_array_equal(r["last_mistake"], [4, 3, -1])
        np.testing.assert_array_equal(r["never_learned"], [False, True, False])
        np.testing.assert_array_equal(r["unforgettable"], [False, False, True])
        np.testing.assert_allclose(r["correctness"], [0.5, 0.0, 1.0])
        hi = 1 / (1 + math.exp(-5))
        np.testing.assert_allclose(r["confidence"], [0.5, 1 - hi, hi], rtol=1e-6)
        np.testing.assert_allclose(r["variability"], [hi - 0.5, 0, 0], atol=1e-6)
        # epochs of 2 rows: rows 0-1 (4 predictions), 2-3 (the NaN one has none), 4
        np.testing.assert_array_equal(r["epoch_predictions"].sum(1), [4, 2, 2])


def test_diverged_run(diverged):
    ds, index, logits, y, n = _log(diverged)
    assert ds.attrs["status"] == "diverged"
    out = compute_run(diverged, ["dynamics"])
    assert out["dynamics"].startswith("computed"), out
    res = read_probe(diverged, "dynamics")
    want = brute_force(index, logits, y, n)
    check_per_sample({k: res[f"dyn_{k}"].values for k in PER_SAMPLE}, want)
    finite = np.isfinite(logits).all(-1) | (index < 0)
    assert not finite.all()  # float16 overflows, then NaN: presentations without a prediction
    assert (res.dyn_presentations > res.dyn_predictions).any()
    assert np.isfinite(res.dyn_subset_confidence.values).all()


@pytest.mark.slow
def test_cost_next_to_training(tmp_path):
    """The probe's compute time against the run's training time, on the demo's configuration (parity,
    FCN 3x200, 10000 training samples, batches of 100) cut to 4000 steps (40 epochs)."""
    cfg = RunConfig(dataset="parity", model="fcn", lr=0.1, max_steps=4000, stop="max-steps")
    path = train_run(cfg, tmp_path, progress=False).path
    timings = lrscope.open_run(path).attrs["timings"]
    t0 = time.perf_counter()
    compute_run(path, ["dynamics"])
    seconds = time.perf_counter() - t0
    probe = read_probe(path, "dynamics").attrs["seconds"]
    ratio = probe / timings["train_seconds"]
    print(f"\ndynamics probe: {probe:.3f} s compute ({seconds:.3f} s with open, lock and write) for 4000 steps "
          f"x 100 samples; training {timings['train_seconds']:.1f} s (wall {timings['wall_seconds']:.1f} s): "
          f"{ratio:.4f}x")
    assert ratio < 0.1
