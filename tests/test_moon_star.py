"""The moon-star generator (train/synthetic.py): Geirhos et al.'s shapes and quadrant rule, exact
bias-conflicting fractions, determinism, option checks, and the command line's one-line errors."""

import json

import numpy as np
import pytest
import torch

from lrscope.errors import ConfigError
from lrscope.train.data import build_dataset, check_data_options


def _quadrants(x: np.ndarray) -> np.ndarray:
    """(row half, col half) of the centroid of the lit pixels of each image (n, 1, s, s)."""
    lit = x[:, 0] > 127
    s = x.shape[-1]
    rows, cols = np.arange(s) + 0.5, np.arange(s) + 0.5
    n_lit = lit.sum((1, 2))
    assert (n_lit > 0).all()
    cy = (lit.sum(2) * rows).sum(1) / n_lit
    cx = (lit.sum(1) * cols).sum(1) / n_lit
    return np.stack([cy >= s / 2, cx >= s / 2], 1).astype(int)


def _diagonal(q: np.ndarray) -> np.ndarray:
    """0: top-left or bottom-right (the moons'); 1: top-right or bottom-left (the stars')."""
    return (q[:, 0] != q[:, 1]).astype(int)


def test_quadrant_rule_and_exact_rho():
    """Aligned samples: moons top-left/bottom-right, stars top-right/bottom-left; conflicting ones
    on the other diagonal; both quadrants of a diagonal used; exactly round(ρ n) conflicting."""
    b = build_dataset("moon_star", seed=3, n_train=400, n_test=200, size=32, noise=0.0)
    for split, rho in ((b.train, 0.1), (b.test, 0.5)):
        x, y, bias = split.x.numpy(), split.y.numpy(), split.b.numpy()
        assert (y != bias).sum() == round(rho * len(y))
        assert (np.bincount(y) == len(y) // 2).all()
        q = _quadrants(x)
        np.testing.assert_array_equal(_diagonal(q), bias)  # the position is the bias label
        aligned = y == bias
        assert (_diagonal(q[aligned & (y == 1)]) == 1).all() and (_diagonal(q[aligned & (y == 0)]) == 0).all()
        for k in (0, 1):  # both quadrants of each diagonal occur
            assert len({tuple(v) for v in q[bias == k]}) == 2
    assert b.num_classes == b.num_bias == 2


def test_shapes_are_geirhos_bitmaps_at_their_scale():
    """On their 200x200 canvas, noise-free and unjittered: the moon 62 px tall x 42 wide with
    1371 lit pixels, the star 65 x 69 with 2043 (measured on rgeirhos/shortcut-perspective's
    bunny.npy and cow.npy); a moon's lit pixels are one crescent opening right."""
    b = build_dataset("moon_star", seed=0, n_train=8, n_test=2, size=200, noise=0.0, jitter=0.0)
    x, y = b.train.x.numpy()[:, 0] > 0, b.train.y.numpy()
    for cls, (h, w, area) in ((0, (62, 42, 1371)), (1, (65, 69, 2043))):
        img = x[np.flatnonzero(y == cls)[0]]
        rows, cols = np.flatnonzero(img.any(1)), np.flatnonzero(img.any(0))
        assert abs(len(rows) - h) <= 2 and abs(len(cols) - w) <= 2, (cls, len(rows), len(cols))
        assert abs(img.sum() / area - 1) < 0.03, (cls, img.sum())
    moon = x[np.flatnonzero(y == 0)[0]]
    mid = moon[moon.any(1)][len(np.flatnonzero(moon.any(1))) // 2]  # the middle row: one run of lit pixels
    assert np.count_nonzero(np.diff(mid.astype(int)) == 1) == 1
    star = x[np.flatnonzero(y == 1)[0]]
    top = star[np.flatnonzero(star.any(1))[0]]
    assert top.sum() <= 3  # one point up


def test_dtypes_shapes_regions_and_determinism():
    kw = dict(n_train=120, n_test=60, size=20)
    a, a2, c = (build_dataset("moon_star", seed=s, **kw) for s in (5, 5, 6))
    assert a.train.x.shape == (120, 1, 20, 20) and a.train.x.dtype == torch.uint8
    assert a.test.x.shape == (60, 1, 20, 20) and a.input_shape == (1, 20, 20)
    assert a.train.y.dtype == a.train.b.dtype == torch.int64
    assert a.regions == {}  # the shape's pixels carry both the class and the position cue
    for sp in ("train", "test"):
        for k in ("x", "y", "b", "index"):
            assert torch.equal(getattr(getattr(a, sp), k), getattr(getattr(a2, sp), k))
    assert not torch.equal(a.train.x, c.train.x)
    # defaults: the calibrated data (docs/moon_star.md)
    d = build_dataset("moon_star", seed=0, n_train=50, n_test=50)
    assert d.input_shape == (1, 28, 28) and "noise 0.35" in d.description


def test_noise_jitter_and_scale_do_what_they_say():
    base = dict(seed=1, n_train=200, n_test=20, size=24)
    clean = build_dataset("moon_star", noise=0.0, **base).train
    assert set(np.unique(clean.x.numpy())) == {0, 255}
    noisy = build_dataset("moon_star", noise=0.35, **base).train.x.numpy()
    assert len(np.unique(noisy)) > 100
    # without jitter, every image of a (class, quadrant) is the same bitmap
    fixed = build_dataset("moon_star", noise=0.0, jitter=0.0, **base).train
    x, y = fixed.x.numpy(), fixed.y.numpy()
    q = _quadrants(x)
    for cls in (0, 1):
        for quad in {tuple(v) for v in q}:
            sel = x[(y == cls) & (q == quad).all(1)]
            if len(sel):
                assert (sel == sel[0]).all()
    assert len({x[i].tobytes() for i in range(len(x))}) <= 8
    # with jitter, positions vary
    assert len({clean.x[i].numpy().tobytes() for i in range(len(clean))}) > 50
    small = build_dataset("moon_star", noise=0.0, scale=0.5, **base).train.x.numpy()
    ratio = (small > 0).sum() / (clean.x.numpy() > 0).sum()
    assert 0.2 < ratio < 0.3  # half the size, a quarter of the pixels


@pytest.mark.parametrize("opts,match", [
    ({"scale": 0}, "scale"), ({"scale": 2.5}, "scale"), ({"jitter": -0.1}, "jitter"), ({"jitter": 0.3}, "jitter"),
    ({"noise": -1}, "noise"), ({"size": 4}, "size"), ({"n_train": 0}, "n_train"),
    ({"size": 2048, "n_train": 1000}, "too large"), ({"shape": "heart"}, "unknown data option"),
])
def test_option_checks(opts, match):
    with pytest.raises(ConfigError, match=match) as e:
        check_data_options("moon_star", opts)
    assert "\n" not in str(e.value)


def test_bad_option_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from lrscope.cli.train import main

    out = tmp_path / "runs"
    res = CliRunner().invoke(main, ["run", "--dataset", "moon_star", "--data-options", json.dumps({"jitter": 0.4}),
                                    "--lr", "0.1", "--out", str(out), "--max-steps", "2"])
    assert res.exit_code == 2, res.output
    assert "jitter" in res.output and "Traceback" not in res.output
    assert len([ln for ln in res.output.strip().splitlines() if ln.strip()]) == 1, res.output
    assert not out.exists() or not any(out.iterdir())


def _fcn_widths(model) -> list[int]:
    return [m.out_features for m in model.features if isinstance(m, torch.nn.Linear)]


def test_fcn_default_is_the_papers_architecture_and_says_so(tmp_path):
    """`lrtrain run --dataset moon_star --model fcn` trains the replication's 3x200 FCN (Barsbey et
    al. 2025, section 4), records the widths in the store, and its first lines say which and why."""
    from click.testing import CliRunner

    from lrscope.cli.train import main
    from lrscope.store.reader import open_run
    from lrscope.train.restore import load_model

    out = tmp_path / "runs"
    res = CliRunner().invoke(main, ["run", "--dataset", "moon_star", "--model", "fcn", "--lr", "0.1",
                                    "--data-options", json.dumps({"n_train": 200, "n_test": 100}),
                                    "--max-steps", "4", "--checkpoint-every", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "fcn hidden widths 200,200,200 (the paper's FCN for moon_star" in res.output, res.output
    (path,) = out.iterdir()
    ds = open_run(path)
    assert ds.attrs["model_info"]["widths"] == [200, 200, 200]
    assert _fcn_widths(load_model(ds)) == [200, 200, 200]


def test_stores_from_before_recorded_widths_rebuild_and_resume_as_trained(tmp_path, monkeypatch):
    """A store written before the widths were recorded (moon_star's FCN was then 2x1024, the image
    default) still loads and resumes with the network it was trained with, not today's default."""
    import dataclasses

    import zarr

    from lrscope.store.reader import open_run
    from lrscope.train.config import RunConfig
    from lrscope.train.loop import train_run
    from lrscope.train.recipes import DATASETS
    from lrscope.train.restore import load_model

    cfg = RunConfig(dataset="moon_star", model="fcn", lr=0.1, max_steps=4, checkpoint_every=2,
                    data_options={"n_train": 200, "n_test": 100})
    old = dataclasses.replace(DATASETS["moon_star"], fcn_widths=None)
    with monkeypatch.context() as m:  # the registry as it was: no declared widths
        m.setitem(DATASETS, "moon_star", old)
        train_run(cfg, out=tmp_path, progress=False)
    (path,) = tmp_path.iterdir()
    root = zarr.open_group(path, mode="r+")
    info = dict(root.attrs["model_info"])
    assert info.pop("widths") == [1024, 1024]
    root.attrs["model_info"] = info  # as an older lrscope wrote it
    assert _fcn_widths(load_model(open_run(path))) == [1024, 1024]
    root.attrs["status"] = "running"  # as if stopped at its last checkpoint: resuming loads it into the network
    res = train_run(cfg, out=tmp_path, progress=False)
    assert res.resumed_from == 4 and res.status == "completed"
