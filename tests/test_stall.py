"""The stall probe (probe/stall.py): the plateau search against a brute force, the flag's rules on
hand-made curves, and a real run that collapses to a constant output flagged by `lrprobe ls`."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from lrscope.probe import stall as ST


def _brute(blocks, band=ST.BAND, fitted=ST.FITTED):
    best = (0, 0)
    for s in range(len(blocks)):
        for e in range(s + 1, len(blocks) + 1):
            w = blocks[s:e]
            if not np.isfinite(w).all() or w.max() - w.min() > band:
                break
            if e - s > best[1] and w.mean() < fitted:
                best = (s, e - s)
    return best


def test_longest_plateau_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        blocks = np.round(rng.uniform(0.4, 1.0, n) * 20) / 20  # ties and exact band edges
        blocks[rng.random(n) < 0.05] = np.nan
        got = ST.longest_plateau(blocks)
        want = _brute(blocks)
        assert got[1] == want[1], (blocks, got, want)
        if want[1]:
            w = blocks[got[0]:got[0] + got[1]]
            assert w.max() - w.min() <= ST.BAND and w.mean() < ST.FITTED


def _curve(steps, plateau, at=0.75):
    """Accuracy rising to `at`, flat there for `plateau` steps, then rising to 1."""
    rise = np.linspace(0.5, at, 500)
    tail = np.linspace(at, 1.0, steps - 500 - plateau)
    return np.concatenate([rise, np.full(plateau, at), tail])


@pytest.mark.parametrize("steps, plateau, dead_in, dead_units, stalled", [
    (9560, 4400, 0.26, 0.1, True),    # the LR-0.75 seed: 4400 flat steps, 26 % of inputs dead
    (9560, 4400, 0.02, 0.6, True),    # most units dead
    (9560, 4400, 0.02, 0.1, False),   # flat but alive: a slow run, not a stall
    (3000, 400, 0.5, 0.9, False),     # dead but short
])
def test_stall_rules(steps, plateau, dead_in, dead_units, stalled):
    acc = _curve(steps, plateau)
    snaps = np.arange(0, steps + 1, 400, dtype=float)
    s = ST.stall(acc, 100, 4000, snaps, np.full(len(snaps), dead_in), np.full(len(snaps), dead_units))
    assert s["stalled"] is stalled
    # the band (0.05) also takes in the climb after the plateau (0.25 over the rest: a fifth of it)
    assert plateau - s["block"] <= s["length"] <= plateau + (steps - 500 - plateau) / 5 + 2 * s["block"]
    assert s["accuracy"] == pytest.approx(0.75, abs=0.03)


def test_a_fitted_end_is_not_a_plateau():
    acc = np.concatenate([np.linspace(0.5, 1.0, 1000), np.ones(9000)])
    snaps = np.arange(0, 10001, 500, dtype=float)
    s = ST.stall(acc, 100, 4000, snaps, np.ones(len(snaps)), np.ones(len(snaps)))
    assert not s["stalled"] and s["length"] < 1000


def test_a_collapsed_run_is_flagged_stalled_in_ls(tmp_path):
    """Moon-star with heavy pixel noise at a large learning rate collapses to a constant output (the
    ReLUs die): `lrprobe ls` says stalled; the same data at a small learning rate is not flagged."""
    from lrscope.cli.probe import main as lrprobe
    from lrscope.cli.train import main as lrtrain
    from lrscope.store.reader import open_run

    data = json.dumps({"n_train": 400, "n_test": 100, "noise": 0.5, "size": 16})
    for lr in ("1.5", "0.05"):
        res = CliRunner().invoke(lrtrain, ["run", "--dataset", "moon_star", "--model", "fcn", "--widths", "64,64",
                                           "--lr", lr, "--max-steps", "1100", "--data-options", data,
                                           "--val-fraction", "0", "--out", str(tmp_path), "--quiet"])
        assert res.exit_code == 0, res.output
    res = CliRunner().invoke(lrprobe, ["compute", str(tmp_path), "--only", "stall", "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(lrprobe, ["ls", str(tmp_path)])
    rows = {ln.split()[0]: ln.split()[1] for ln in res.output.splitlines()[1:]}
    (hi,) = [r for r in rows if "lr1.5" in r]
    (lo,) = [r for r in rows if "lr0.05" in r]
    assert rows[hi] == "stalled" and rows[lo] != "stalled", res.output
    ds = open_run(next(tmp_path.glob("*lr1.5*.zarr")))
    assert bool(ds.stalled) and float(ds.plateau_dead_input_fraction) >= ST.DEAD_INPUTS
    assert ds.plateau_steps.attrs["units"] == "steps" and not math.isnan(float(ds.plateau_accuracy))
    assert ds.dead_input_fraction.dims == ("snapshot",)
    # the explorer's run list says it too
    from lrscope.viz.app import SweepData, discover

    d = SweepData.load(next(iter(discover([tmp_path]).values())))
    assert d.flags.get(hi) == "stalled" and d.flags.get(lo) != "stalled", d.flags
