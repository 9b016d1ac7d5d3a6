"""Fig. 10 (issue #19): foreground masks from a local DeepLabV3 file (random weights here, never a
download), the attributions probe's background share through `lrprobe compute --segmenter-weights`
on a tiny run of CIFAR-10 written in torchvision's batch layout, its provenance, the bad inputs,
and a miniature of the Fig. 10 specs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import lrscope
from lrscope.cli.probe import main as lrprobe
from lrscope.errors import LrscopeError
from lrscope.probe.attribution import attributions, background_share_np
from lrscope.probe.segment import foreground_masks, load_segmenter
from lrscope.store.reader import read_probe
from lrscope.train.config import RunConfig
from lrscope.train.data import as_model_input
from lrscope.train.loop import train_run
from lrscope.train.restore import load_model
from lrscope.train.sweep import load_spec

import fabricate

PAPER = Path(__file__).resolve().parents[1] / "examples" / "paper"
ARCH = "deeplabv3_mobilenet_v3_large"


def _images(n=8) -> torch.Tensor:
    return torch.from_numpy(fabricate.cifar_images(np.arange(n) % 10)).float() / 255


@pytest.fixture(scope="module")
def seg_file(tmp_path_factory) -> str:
    """A random-weights deeplabv3_mobilenet_v3_large (44 MB) whose head is set so that VOC classes 0
    and 1 split the pixels of the fabricated CIFAR images about in half (random weights alone call
    every pixel one class): class 1 = -class 0, the others never win, the bias at the median."""
    from torchvision.models import segmentation

    torch.manual_seed(0)
    m = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21,
                                                  aux_loss=False).eval()
    sd = m.state_dict()
    feats = []
    m.classifier[3].register_forward_hook(lambda mod, i, o: feats.append(o))
    foreground_masks(m, _images())
    w = sd["classifier.4.weight"]
    proj = torch.einsum("nchw,c->nhw", feats[0], w[0, :, 0, 0])
    scale = 1.0 / float(proj.std())
    w[0] *= scale
    w[1] = -w[0]
    w[2:] = 0
    b = sd["classifier.4.bias"]
    med = float(proj.median()) * scale
    b[0], b[1], b[2:] = -med, med, -1e3
    path = tmp_path_factory.mktemp("seg") / "seg.pth"
    torch.save(sd, path)
    return str(path)


def test_masks_shape_dtype_deterministic_and_grey(seg_file):
    x = _images()
    a = foreground_masks(load_segmenter(seg_file, ARCH), x)
    b = foreground_masks(load_segmenter(seg_file, ARCH), x)
    assert a.shape == (8, 32, 32) and a.dtype == bool
    np.testing.assert_array_equal(a, b)
    assert 0.2 < a.mean() < 0.8  # both classes present: the masks are not trivial
    grey = x[:, :1]
    np.testing.assert_array_equal(foreground_masks(load_segmenter(seg_file, ARCH), grey),
                                  foreground_masks(load_segmenter(seg_file, ARCH), grey.expand(-1, 3, -1, -1)))
    with pytest.raises(LrscopeError, match="images"):
        foreground_masks(load_segmenter(seg_file, ARCH), torch.rand(4, 10))


def test_bad_segmenter_files(seg_file, tmp_path):
    with pytest.raises(LrscopeError, match="no such file"):
        load_segmenter(str(tmp_path / "nope.pth"), ARCH)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(LrscopeError, match="not a loadable state dict"):
        load_segmenter(str(junk), ARCH)
    torch.save({"a": 1}, tmp_path / "notensors.pth")
    with pytest.raises(LrscopeError, match="dict of tensors"):
        load_segmenter(str(tmp_path / "notensors.pth"), ARCH)
    with pytest.raises(LrscopeError, match="does not match deeplabv3_resnet101"):
        load_segmenter(seg_file, "deeplabv3_resnet101")
    with pytest.raises(LrscopeError, match="unknown; valid"):
        load_segmenter(seg_file, "unet")


# ---------------------------------------------------------------------------------- the probe
@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    root = fabricate.cifar10(tmp_path_factory.mktemp("data"), n_per_batch=20, n_test=40)
    cfg = RunConfig(dataset="cifar10", model="cnn", model_options={"width": 0.125}, data_root=str(root), lr=0.05,
                    batch_size=20, max_steps=20, stop="max-steps", snapshot_every=10, checkpoint_every=10,
                    probe_size=40)
    r = train_run(cfg, tmp_path_factory.mktemp("runs"), progress=False)
    assert r.status == "completed", r.message
    return r.path


def _files(path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in Path(path).rglob("*") if p.is_file()}


def test_probe_background_share_through_the_cli(cifar_run, seg_file, tmp_path):
    run = CliRunner()
    res = run.invoke(lrprobe, ["compute", str(cifar_run), "--only", "accuracy,attributions", "--quiet"],
                     catch_exceptions=False)
    assert res.exit_code == 0, res.output
    plain = read_probe(cifar_run, "attributions")
    assert "ig_background_share" not in plain and "foreground_masks" not in plain  # without the option: unchanged
    assert "ig_entropy" in plain

    res = run.invoke(lrprobe, ["compute", str(cifar_run), "--only", "accuracy,attributions", "--quiet",
                               "--segmenter-weights", seg_file, "--segmenter", ARCH], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "1 probes computed, 1 up to date" in res.output  # accuracy does not depend on the segmenter
    out = read_probe(cifar_run, "attributions")
    for v in ("ig_background_share", "deeplift_background_share", "foreground_fraction", "foreground_masks"):
        assert v in out, v
        assert out[v].attrs["long_name"] and out[v].attrs["description"] and "units" in out[v].attrs
        assert out[v].attrs["segmenter"] == ARCH and len(out[v].attrs["segmenter_sha256"]) == 64
    assert out.ig_background_share.dims == ("attr_checkpoint",)
    assert out.foreground_masks.dims == ("map_sample", "input_1", "input_2")
    assert out.foreground_masks.dtype == bool

    # against a direct computation: the last checkpoint's IG maps and the segmenter's masks
    ds = lrscope.open_run(cifar_run)
    n = ds.sizes["probe_sample"]  # 40 < attr_samples: every probe input, in order
    x = as_model_input(torch.from_numpy(np.asarray(ds.probe_inputs.values)))
    masks = foreground_masks(load_segmenter(seg_file, ARCH), x)
    assert 0 < masks.mean() < 1
    a = attributions(load_model(ds, checkpoint=-1), x, torch.from_numpy(ds.probe_y.values)).values
    assert len(a) == n
    np.testing.assert_allclose(float(out.ig_background_share[-1]), background_share_np(a, masks[:, None]),
                               rtol=1e-5)
    assert float(out.foreground_fraction) == pytest.approx(masks.mean())
    np.testing.assert_array_equal(out.foreground_masks.values, masks[out.map_sample_index.values])
    # a constant-share sanity check: a mask of everything is no background
    assert background_share_np(a, np.ones_like(masks)[:, None]) == 0

    # provenance: the file's content, not its path; a different file recomputes
    copy = tmp_path / "copy.pth"
    shutil.copy(seg_file, copy)
    res = run.invoke(lrprobe, ["compute", str(cifar_run), "--only", "attributions", "--quiet",
                               "--segmenter-weights", str(copy), "--segmenter", ARCH], catch_exceptions=False)
    assert "0 probes computed, 1 up to date" in res.output, res.output
    sd = torch.load(copy, weights_only=True)
    sd["classifier.4.bias"][0] += 1.0
    torch.save(sd, copy)
    res = run.invoke(lrprobe, ["compute", str(cifar_run), "--only", "attributions", "--quiet",
                               "--segmenter-weights", str(copy), "--segmenter", ARCH], catch_exceptions=False)
    assert "1 probes computed" in res.output, res.output
    assert read_probe(cifar_run, "attributions").ig_background_share.attrs["segmenter_sha256"] != \
        out.ig_background_share.attrs["segmenter_sha256"]


def test_bad_segmenter_options_exit_2_and_touch_nothing(cifar_run, seg_file, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    before = _files(cifar_run)
    for args, says in ((["--segmenter-weights", str(tmp_path / "missing.pth")], "no such file"),
                       (["--segmenter-weights", str(junk)], "not a loadable state dict"),
                       (["--segmenter-weights", seg_file], "does not match deeplabv3_resnet50"),  # default arch
                       (["--segmenter-weights", seg_file, "--segmenter", "unet"], "unknown segmenter 'unet'; valid"),
                       (["--segmenter", ARCH], "needs --segmenter-weights")):
        res = CliRunner().invoke(lrprobe, ["compute", str(cifar_run), "--force", "--quiet", *args])
        assert res.exit_code == 2, (args, res.output)
        assert says in res.output and len(res.output.strip().splitlines()) == 1, res.output
        assert "Traceback" not in res.output
    assert _files(cifar_run) == before


def test_fig10_specs_and_their_miniature(seg_file, tmp_path):
    """The specs: ResNet18, low vs high LR, 10 seeds, on CIFAR-10 and CIFAR-100. The miniature: both
    LRs of the CIFAR-100 spec on a fabricated CIFAR-100 (a CNN of width 0.125, 10 steps), probed
    with the segmenter and drawn by the background_share figure."""
    import holoviews as hv

    from lrscope.probe.runner import compute_paths
    from lrscope.viz.figures import FIGURES

    hv.extension("bokeh", logo=False)

    for dataset in ("cifar10", "cifar100"):
        configs = load_spec(PAPER / f"fig10-{dataset}-resnet18.toml")
        assert {(c.dataset, c.model, c.batch_size) for c in configs} == {(dataset, "resnet18", 100)}
        assert sorted({c.lr for c in configs}) == [0.001, 0.1] and {c.seed for c in configs} == set(range(10))
        assert "--segmenter-weights" in (PAPER / f"fig10-{dataset}-resnet18.toml").read_text()
    root = fabricate.cifar100(tmp_path / "data", n_train=200, n_test=40)
    spec = load_spec(PAPER / "fig10-cifar100-resnet18.toml")
    runs = tmp_path / "runs"
    for cfg in [c for c in spec if c.seed in (0, 1)]:
        d = cfg.to_dict()
        d.update(model="cnn", model_options={"width": 0.125}, data_root=str(root), max_steps=10, stop="max-steps",
                 batch_size=20, snapshot_every=5, checkpoint_every=5, probe_size=20)
        assert train_run(RunConfig(**d).validate(), runs, progress=False).status == "completed"
    compute_paths(runs, ["accuracy", "attributions"], progress=False,
                  params={"segmenter_weights": seg_file, "segmenter": ARCH, "attr_samples": 8})
    sweep = lrscope.open_sweep(runs)
    share = sweep.ig_background_share
    assert share.sizes["run"] == 4 and np.isfinite(share.values).all()
    assert ((share.values >= 0) & (share.values <= 1)).all()
    fig = FIGURES["background_share"]
    assert fig.applies(sweep) and not fig.applies(sweep.drop_vars(["ig_background_share",
                                                                   "deeplift_background_share"]))
    layout = fig(sweep)
    assert len(layout) == 2  # background share and entropy panels, each with both methods
    hv_curves = layout.traverse(lambda e: e, [hv.Curve])
    assert len(hv_curves) == 4 and all(len(c.data) == 2 for c in hv_curves)  # 2 LRs per line
    assert hv.render(layout, backend="bokeh") is not None


def test_non_image_inputs_get_a_note_not_a_share(seg_file, tmp_path, tiny):
    """Parity's vector inputs cannot be segmented: the rest of the probe is computed, the result
    says why the background share is missing."""
    from lrscope.probe.runner import compute_run

    r = train_run(tiny(max_steps=40, stop="max-steps"), tmp_path, progress=False)
    out = compute_run(r.path, ["attributions"], params={"segmenter_weights": seg_file, "segmenter": ARCH,
                                                        "attr_samples": 8})
    assert out["attributions"].startswith("computed"), out
    res = read_probe(r.path, "attributions")
    assert "ig_entropy" in res and "ig_background_share" not in res and "foreground_masks" not in res
    assert res.attrs["background_share"].startswith("not computed: the inputs")
