"""Every figure kind builds from a small real sweep, renders with bokeh (report, notebooks) and
is written as a static file (matplotlib) by `lrprobe figures`."""

import holoviews as hv
import pytest
from click.testing import CliRunner

import lrscope
from lrscope.cli.probe import main as lrprobe
from lrscope.viz import figures as F


@pytest.mark.parametrize("name", list(F.FIGURES))
def test_figure_builds_and_renders(tiny_sweep, name):
    hv.extension("bokeh", logo=False)
    sw = lrscope.open_sweep(tiny_sweep)
    fig = F.FIGURES[name](sw)
    assert isinstance(fig, (hv.Overlay, hv.Layout, hv.Table, hv.Element))
    model = hv.render(fig, backend="bokeh")
    assert model is not None
    if isinstance(fig, hv.Overlay) and name not in ("loss_ratio_vs_accuracy",):
        assert len(fig) >= 2, "one curve per learning rate (or metric) expected"


def test_metrics_vs_lr_marks_diverged(tiny_sweep, tmp_path, tiny):
    import shutil

    from lrscope.train.loop import train_run

    d = tmp_path / "sw"
    shutil.copytree(tiny_sweep, d)
    train_run(tiny(lr=1e6, max_steps=400, stop="max-steps"), d, progress=False)
    from lrscope.probe.runner import compute_paths

    compute_paths(d, progress=False)
    sw = lrscope.open_sweep(d)
    assert (sw.status == "diverged").sum() == 1
    fig = F.metrics_vs_lr(sw)
    labels = [el.label for el in fig]
    assert "diverged" in labels
    # diverged runs are excluded from the per-LR means (normalisation)
    assert 1e6 not in F.lr_values(sw)


def test_trend_words():
    lrs = [0.01, 0.1, 0.5, 0.75]
    assert F.trend(lrs, [0.5, 0.6, 0.8, 0.9]) == (1.0, "rises")
    assert F.trend(lrs, [0.9, 0.8, 0.6, 0.5]) == (-1.0, "falls")
    rho, word = F.trend(lrs, [0.5, 0.9, 0.4, 0.6])
    assert word == "no clear trend" and -0.5 <= rho <= 0.5
    assert F.trend(lrs, [0.5, float("nan"), 0.6, 0.7])[1] == "rises"  # LRs without a value are skipped
    assert F.trend(lrs[:2], [0.5, 0.6])[1] == "-"  # too few LRs to say
    assert F.trend(lrs, [0.5] * 4)[1] == "-"


def test_lrprobe_figures_writes_files(tiny_sweep, tmp_path):
    out = tmp_path / "figs"
    res = CliRunner().invoke(lrprobe, ["figures", str(tiny_sweep), "-o", str(out), "--format", "svg",
                                       "--only", "metrics_vs_lr,pruning_curves,minmax_table"])
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["parity-fcn-metrics_vs_lr.svg", "parity-fcn-minmax_table.csv", "parity-fcn-pruning_curves.svg"]
    assert (out / "parity-fcn-metrics_vs_lr.svg").read_text().lstrip().startswith("<?xml")
    res = CliRunner().invoke(lrprobe, ["figures", str(tiny_sweep), "--only", "nope"])
    assert res.exit_code == 2 and "unknown figure" in res.output


def test_sweep_with_train_logits_only_at_the_end(tmp_path, tiny):
    """The default cost rule on real sizes records train logits only at the final snapshot:
    probes, open_sweep, figures and the report must cope (regression: duplicate Lorenz index)."""
    from lrscope.probe.runner import compute_paths
    from lrscope.train.loop import train_run
    from lrscope.viz.report import write_report

    for lr in (0.05, 0.5):
        train_run(tiny(lr=lr, train_logits="final", max_steps=80, stop="max-steps"), tmp_path, progress=False)
    compute_paths(tmp_path, progress=False, names=["accuracy", "loss_ratio", "importance"])
    sw = lrscope.open_sweep(tmp_path)
    assert sw.importance_lorenz.sizes["lorenz_at"] == 2
    assert (sw.lorenz_snapshot.isel(lorenz_at=0) == sw.lorenz_snapshot.isel(lorenz_at=1)).all()
    hv.render(F.lorenz_curves(sw), backend="bokeh")
    write_report(tmp_path, tmp_path / "r.html")
