"""Dataset recipes and loaders, on IDX files fabricated in the real on-disk format, on sklearn's
digits, and on Debian's Fashion-MNIST when installed; plus every dataset x model pair."""

import gzip
import struct

import numpy as np
import pytest
import torch

import lrscope
from lrscope.errors import ConfigError, DataError
from lrscope.train.data import DATASETS, build_dataset
from lrscope.train.images import COLORS, DEBIAN_FASHION, read_idx
from lrscope.train.loop import train_run
from lrscope.train.models import IMAGE_MODELS, MODELS

from conftest import tiny_config


def write_idx(path, arr, gz=True):
    if arr.ndim == 3:
        header = struct.pack(">IIII", 2051, *arr.shape)
    else:
        header = struct.pack(">II", 2049, len(arr))
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    """A tiny MNIST in torchvision's layout: <root>/MNIST/raw/*-ubyte.gz (80 train, 40 test)."""
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 80), ("t10k", 40)):
        y = np.arange(n) % 10
        x = np.zeros((n, 28, 28), np.uint8)
        for i, k in enumerate(y):  # a class-dependent stroke so the digits differ
            x[i, 4 + k:8 + k, 6:22] = 200 + rng.integers(0, 55)
        write_idx(raw / f"{split}-images-idx3-ubyte", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y)
    return root


def test_read_idx_roundtrip_and_errors(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "img", x, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "img"), x)
    write_idx(tmp_path / "lab", np.array([3, 1]))
    np.testing.assert_array_equal(read_idx(tmp_path / "lab.gz"), [3, 1])
    (tmp_path / "bad").write_bytes(struct.pack(">II", 2051, 5) + b"\x00" * 10)
    with pytest.raises(DataError):
        read_idx(tmp_path / "bad")
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78" * 4)
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "junk")


def test_colored_mnist_recipe(mnist_root):
    b = build_dataset("colored_mnist", data_root=str(mnist_root), seed=0)
    assert b.train.x.shape == (80, 3, 28, 28) and b.train.x.dtype == torch.uint8
    assert len(b.test) == 40
    bc = (b.train.y != b.train.b).numpy()
    assert bc.sum() == round(0.025 * 80)
    # the foreground colour of each image is its bias label's colour
    for i in range(10):
        img = b.train.x[i].float().numpy()
        fg = img.max(axis=(1, 2))
        fg = fg / fg.max()
        np.testing.assert_allclose(fg, COLORS[int(b.train.b[i])] / COLORS[int(b.train.b[i])].max(), atol=0.05)
    # unbiased test: 90% conflicting
    assert (b.test.y != b.test.b).float().mean().item() == pytest.approx(0.9)
    b2 = build_dataset("colored_mnist", data_root=str(mnist_root), seed=0, bias_conflicting_ratio=0.5)
    assert (b2.train.y != b2.train.b).sum().item() == 40


def test_double_mnist_recipe(mnist_root):
    b = build_dataset("double_mnist", data_root=str(mnist_root), seed=1)
    assert b.train.x.shape == (80, 1, 28, 56)
    left, right = b.train.x[..., :28].float(), b.train.x[..., 28:].float()
    assert right.max() > left.max()  # the right (spurious) digit is brighter
    assert set(b.regions) == {"core", "spurious"} and b.regions["core"][..., :28].all()
    # the right digit's class is b: its stroke row is where class b draws it
    for i in range(10):
        rows = np.flatnonzero(b.train.x[i, 0, :, 28:].numpy().max(1) > 0)
        assert rows.min() == 4 + int(b.train.b[i])


def test_missing_data_root_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="to get them"):
        build_dataset("colored_mnist", data_root=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown base"):
        build_dataset("colored_mnist", base="svhn")
    with pytest.raises(ConfigError, match="unknown data option"):
        build_dataset("parity", bogus=1)


def test_digits_base_needs_no_files():
    b = build_dataset("colored_mnist", base="digits")
    assert b.train.x.shape == (1500, 3, 28, 28) and len(b.test) == 297


@pytest.mark.skipif(not DEBIAN_FASHION.exists(), reason="Debian's dataset-fashion-mnist not installed")
def test_debian_fashion_mnist():
    b = build_dataset("colored_mnist", base="fashion_mnist", n_train=500, n_test=100)
    assert b.train.x.shape == (500, 3, 28, 28) and len(b.test) == 100
    assert b.description == "colored fashion_mnist"


SMALL = {
    "parity": dict(tiny_config().data_options),
    "moon_star": {"n_train": 200, "n_test": 100, "size": 16},
    "colored_mnist": {"base": "digits", "n_train": 200, "n_test": 100},
    "double_mnist": {"base": "digits", "n_train": 200, "n_test": 100},
}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_dataset_model_pair(tmp_path, dataset, model):
    cfg = tiny_config(dataset=dataset, model=model, data_options=SMALL[dataset], max_steps=6, snapshot_every=3,
                      checkpoint_every=3, probe_size=40, widths=[16] if model == "fcn" else None,
                      model_options={"width": 0.125} if model == "cnn" else {})
    bundle = build_dataset(dataset, **SMALL[dataset])
    if model in IMAGE_MODELS and len(bundle.input_shape) != 3:
        with pytest.raises(ConfigError, match="image inputs"):
            train_run(cfg, tmp_path, progress=False)
        return
    r = train_run(cfg, tmp_path, progress=False)
    ds = lrscope.open_run(r.path)
    assert ds.attrs["status"] == "completed" and ds.sizes["iteration"] == 6
    assert ds.sizes["probe_sample"] == 40
    net = lrscope.load_model(ds)
    from lrscope.train.data import as_model_input

    with torch.inference_mode():
        out = net(as_model_input(torch.from_numpy(ds.probe_inputs.values)))
    np.testing.assert_allclose(out.numpy(), ds.probe_logits.isel(snapshot=-1).values, rtol=1e-4, atol=1e-4)
