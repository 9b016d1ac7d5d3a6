"""Dataset recipes and loaders, on IDX files fabricated in the real on-disk format, on sklearn's
digits, and on Debian's Fashion-MNIST when installed; plus every dataset x model pair."""

import dataclasses
import json
import struct

import numpy as np
import pytest
import torch
import zarr

import lrscope
from lrscope.errors import ConfigError, DataError
from lrscope.store import schema as S
from lrscope.train.data import DATASETS, build_dataset
from lrscope.train.images import COLORS
from lrscope.train.loop import train_run
from lrscope.train.models import MODELS
from lrscope.train.recipes import DEBIAN_FASHION, read_idx

import fabricate
from conftest import tiny_config
from fabricate import write_idx


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    """A tiny MNIST in torchvision's layout: <root>/MNIST/raw/*-ubyte.gz (80 train, 40 test)."""
    return fabricate.mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Every file format in one --data-root: MNIST IDX, CIFAR-10/100 batches, CelebA, Waterbirds,
    ImageNet folders."""
    root = tmp_path_factory.mktemp("all")
    for make in (fabricate.mnist, fabricate.cifar10, fabricate.cifar100, fabricate.celeba, fabricate.waterbirds,
                 fabricate.imagenet):
        make(root)
    # your own data beside them; not metadata.csv, which Waterbirds would find at the root
    fabricate.image_folder(root, metadata="groups.csv")
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
    "mnist_cifar": {"n_train": 60},
    "corrupted_cifar10": {"n_train": 60},
    "cifar10": {},
    "cifar100": {},
    "celeba": {"size": 32},
    "waterbirds": {"size": 32},
    "imagenet": {"size": 32},
    "image_folder": {"size": 32, "metadata": "groups.csv"},
}
QUICK_PAIR = {"resnet18": "double_mnist", "resnet50": "colored_mnist"}  # a heavy model's pair in the default suite


def _pair_params():
    """Every pair; those of the big models run in the slow suite (CI runs both)."""
    for dataset in sorted(DATASETS):
        for model in sorted(MODELS):
            heavy = MODELS[model].heavy and dataset != QUICK_PAIR.get(model)
            yield pytest.param(dataset, model, marks=[pytest.mark.slow] if heavy else [])


@pytest.mark.parametrize("dataset,model", list(_pair_params()))
def test_every_dataset_model_pair(tmp_path, data_root, dataset, model):
    cfg = tiny_config(dataset=dataset, model=model, data_options=SMALL[dataset], max_steps=4, snapshot_every=2,
                      checkpoint_every=4, probe_size=20, batch_size=16, data_root=str(data_root), stop="max-steps",
                      widths=[16] if model == "fcn" else None,
                      model_options={"width": 0.125} if model == "cnn" else {})
    bundle = build_dataset(dataset, data_root=str(data_root), **SMALL[dataset])
    if MODELS[model].image and len(bundle.input_shape) != 3:
        with pytest.raises(ConfigError, match="image inputs"):
            train_run(cfg, tmp_path, progress=False)
        return
    r = train_run(cfg, tmp_path, progress=False)
    ds = lrscope.open_run(r.path)
    assert ds.attrs["status"] == "completed" and ds.sizes["iteration"] == 4
    assert ds.sizes["probe_sample"] == min(20, len(bundle.test))
    net = lrscope.load_model(ds)
    from lrscope.train.data import as_model_input

    with torch.inference_mode():
        out = net(as_model_input(torch.from_numpy(ds.probe_inputs.values)))
    np.testing.assert_allclose(out.numpy(), ds.probe_logits.isel(snapshot=-1).values, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------- file-based loaders
def test_cifar_loaders(data_root):
    b = build_dataset("cifar10", data_root=str(data_root))
    assert b.train.x.shape == (100, 3, 32, 32) and len(b.test) == 40 and b.num_classes == 10
    assert (b.train.y == b.train.b).all() and not b.has_bias  # no bias attribute: b = y, a placeholder
    for i in range(10):  # the class's column block is red
        k = int(b.train.y[i])
        assert (b.train.x[i, 0, :, 3 * k:3 * k + 3] == 250).all()
    c = build_dataset("cifar100", data_root=str(data_root))
    assert c.num_classes == 100 and len(c.train) == 200 and (c.train.x[:, 0, 0, 0] == c.train.y * 2).all()
    with pytest.raises(ConfigError, match="no bias-conflicting ratio"):
        build_dataset("cifar10", data_root=str(data_root), bias_conflicting_ratio=0.1)


def test_mnist_cifar_recipe(data_root):
    b = build_dataset("mnist_cifar", data_root=str(data_root), seed=0)
    assert b.train.x.shape == (100, 3, 64, 32) and b.input_shape == (3, 64, 32)
    assert (b.train.y != b.train.b).sum() == 10  # rho 0.1, exact
    assert (b.test.y != b.test.b).float().mean() == pytest.approx(0.9)
    for i in range(20):
        k, d = int(b.train.y[i]), int(b.train.b[i])
        assert (b.train.x[i, 0, 32:, 3 * k:3 * k + 3] == 250).all()  # CIFAR object (core) at the bottom
        rows = np.flatnonzero(b.train.x[i, 0, :32].numpy().max(1) > 0)  # digit (spurious) on top
        assert rows.min() == 2 + 4 + d
    assert b.regions["spurious"][:, :32].all() and b.regions["core"][:, 32:].all()


def test_corruptions_do_what_they_say():
    from lrscope.train.vision import CORRUPTIONS, corrupt

    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(fabricate.cifar_images(np.arange(20) % 10)).float() / 255
    outs = {}
    for kind in CORRUPTIONS:
        o = corrupt(x.clone(), kind, 4, gen)
        assert o.shape == x.shape and o.min() >= 0 and o.max() <= 1, kind
        assert not torch.allclose(o, x, atol=1e-3), kind
        outs[kind] = o
    assert outs["brightness"].mean() > x.mean() + 0.3
    assert outs["contrast"].std() < 0.3 * x.std()
    g = lambda t: t.mean(1)  # noqa: E731
    sat = lambda t: (t - g(t)[:, None]).abs().mean()  # noqa: E731
    assert sat(outs["saturate"]) > 1.5 * sat(x)
    pix = outs["pixelate"]
    assert (pix[..., ::1, 1:] == pix[..., ::1, :-1]).float().mean() > 0.5  # blocky


def test_corrupted_cifar10_recipe(data_root):
    from lrscope.train.vision import CORRUPTIONS, corrupt

    b = build_dataset("corrupted_cifar10", data_root=str(data_root), seed=0, severity=1)
    assert b.train.x.shape == (100, 3, 32, 32) and (b.train.y != b.train.b).sum() == 10
    # brightness (b=3) images are brighter than the clean ones, contrast (b=4) ones flatter
    clean = torch.from_numpy(fabricate.cifar_images(b.train.y.numpy())).float()
    x = b.train.x.float()
    bright, flat = b.train.b == CORRUPTIONS.index("brightness"), b.train.b == CORRUPTIONS.index("contrast")
    assert (x[bright].mean((1, 2, 3)) > clean[bright].mean((1, 2, 3)) + 15).all()
    assert (x[flat].std((1, 2, 3)) < 0.5 * clean[flat].std((1, 2, 3))).all()
    with pytest.raises(ConfigError, match="severity"):
        build_dataset("corrupted_cifar10", data_root=str(data_root), severity=9)
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt(torch.zeros(1, 3, 8, 8), "rain", 1, torch.Generator())


def test_celeba_loader(data_root):
    from fabricate import CELEBA_ATTRS

    b = build_dataset("celeba", data_root=str(data_root), size=32)
    assert b.train.x.shape == (12, 3, 32, 32) and len(b.test) == 6 and b.num_groups == 4
    lines = (data_root / "celeba" / "list_attr_celeba.txt").read_text().splitlines()[2:]
    attrs = np.array([[int(v) for v in ln.split()[1:]] for ln in lines]) > 0
    blond, male = CELEBA_ATTRS.index("Blond_Hair"), CELEBA_ATTRS.index("Male")
    np.testing.assert_array_equal(b.train.y.numpy(), attrs[:12, blond])
    np.testing.assert_array_equal(b.train.b.numpy(), attrs[:12, male])
    np.testing.assert_array_equal(b.test.index.numpy(), np.arange(18, 24))
    # the image's top half is green for blond (k=1), red otherwise: decoded and resized, not scrambled
    top = b.train.x[:, :, :8].float().mean((2, 3))
    assert ((top[:, 1] > top[:, 0]) == b.train.y.bool()).all()
    s = build_dataset("celeba", data_root=str(data_root), size=32, target="Smiling", bias="Young",
                      test_split="valid")
    assert len(s.test) == 6 and (s.train.y.numpy() == attrs[:12, CELEBA_ATTRS.index("Smiling")]).all()
    with pytest.raises(ConfigError, match="no attribute"):
        build_dataset("celeba", data_root=str(data_root), target="Purple_Hair")


def test_waterbirds_loader(data_root):
    b = build_dataset("waterbirds", data_root=str(data_root), size=32)
    assert b.train.x.shape == (12, 3, 32, 32) and len(b.test) == 6
    assert set(zip(b.train.y.tolist(), b.train.b.tolist())) == {(0, 0), (1, 0), (0, 1), (1, 1)}
    top = b.train.x[:, :, :8].float().mean((2, 3))
    assert ((top[:, 1] > top[:, 0]) == b.train.y.bool()).all()


def test_imagenet_loader(data_root):
    b = build_dataset("imagenet", data_root=str(data_root), size=16)
    assert b.num_classes == 3 and b.train.x.shape == (12, 3, 16, 16) and len(b.test) == 6
    assert (b.train.y == b.train.b).all() and not b.has_bias
    tiny = build_dataset("imagenet", data_root=str(data_root), size=16, classes=2, per_class_train=1)
    assert tiny.train.x.shape[0] == 2


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist_cifar", "corrupted_cifar10", "celeba", "waterbirds",
                                  "imagenet", "image_folder"])
def test_missing_files_say_where_to_get_them(tmp_path, name):
    with pytest.raises(DataError, match="to get"):
        build_dataset(name, data_root=str(tmp_path))
    with pytest.raises(DataError, match="to get|--data-root"):
        build_dataset(name, data_root=None)


def test_built_datasets_are_cached(data_root, tmp_path, monkeypatch):
    from lrscope.train import data as D

    monkeypatch.setenv("LRSCOPE_CACHE", str(tmp_path / "cache"))
    first = build_dataset("corrupted_cifar10", data_root=str(data_root), seed=3)
    (folder,) = (tmp_path / "cache").glob("corrupted_cifar10-*")  # one folder of .npy files, no pickle
    assert (folder / "meta.json").exists() and (folder / "train_x.npy").exists()
    assert not list((tmp_path / "cache").glob("*.tmp*"))
    calls = []

    def builder(**kw):
        calls.append(kw)
        raise RuntimeError("rebuilt")

    entry = dataclasses.replace(D.DATASETS["corrupted_cifar10"], build=builder)
    monkeypatch.setitem(D.DATASETS, "corrupted_cifar10", entry)
    again = build_dataset("corrupted_cifar10", data_root=str(data_root), seed=3)
    assert not calls  # served from the cache, same tensors and metadata; the inputs memory-mapped
    assert D.is_mapped(again.train.x) and not D.is_mapped(first.train.x)
    for sp in ("train", "test"):
        for k in ("x", "y", "b", "index"):
            assert torch.equal(getattr(getattr(first, sp), k), getattr(getattr(again, sp), k))
    assert again.input_shape == first.input_shape and again.description == first.description
    with pytest.raises(RuntimeError, match="rebuilt"):  # another seed is another key: the builder runs
        build_dataset("corrupted_cifar10", data_root=str(data_root), seed=4)
    assert calls
    monkeypatch.setenv("LRSCOPE_CACHE", "off")
    assert D.cache_dir() is None


def test_local_weights(tmp_path):
    import torchvision

    from lrscope.train.models import create_model, load_weights

    src = torchvision.models.resnet18(weights=None)  # stands in for an ImageNet checkpoint
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    m = create_model("resnet18", input_shape=(1, 28, 28), num_classes=10)
    fresh = load_weights(m, str(tmp_path / "r18.pth"))
    assert set(fresh) == {"net.conv1.weight", "net.fc.weight", "net.fc.bias", "head.weight", "head.bias"}
    torch.testing.assert_close(m.net.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a loadable"):
        load_weights(m, str(tmp_path / "junk.pth"))
    with pytest.raises(ConfigError, match="no such file"):
        load_weights(m, str(tmp_path / "missing.pth"))
    # through a real run: the stored initial checkpoint holds the loaded tensors
    cfg = tiny_config(dataset="colored_mnist", model="resnet18", data_options={"base": "digits", "n_train": 50,
                      "n_test": 30}, max_steps=2, probe_size=10, batch_size=10, weights=str(tmp_path / "r18.pth"),
                      stop="max-steps")
    path = train_run(cfg, tmp_path / "runs", progress=False).path
    root = zarr.open_group(str(path), mode="r")
    np.testing.assert_allclose(root[S.G_PARAMS]["net.layer1.0.conv1.weight"][0],
                               src.layer1[0].conv1.weight.detach().numpy())


# ------------------------------------------------------------------------------- your own data (image_folder)
def _folder(tmp_path, name="d", **kw):
    return fabricate.image_folder(tmp_path / name, **kw)


def test_image_folder_string_labels(tmp_path):
    root = _folder(tmp_path)  # cat/dog/fox, indoor/outdoor, train/val/test; 36 rows: 18 train, 6 val, 12 test
    b = build_dataset("image_folder", data_root=str(root), size=16)
    assert b.has_bias and b.num_classes == 3 and b.num_bias == 2 and b.input_shape == (3, 16, 16)
    assert b.train.x.shape == (18, 3, 16, 16) and b.train.x.dtype == torch.uint8 and len(b.test) == 12
    # index: the table's row; val rows (18..23) are in neither split
    np.testing.assert_array_equal(b.train.index.numpy(), np.arange(18))
    np.testing.assert_array_equal(b.test.index.numpy(), np.arange(24, 36))
    rows = np.concatenate([np.arange(18), np.arange(24, 36)])
    y = np.concatenate([b.train.y.numpy(), b.test.y.numpy()])
    bb = np.concatenate([b.train.b.numpy(), b.test.b.numpy()])
    np.testing.assert_array_equal(y, rows % 3)  # cat < dog < fox: 0, 1, 2 (sorted)
    np.testing.assert_array_equal(bb, (rows // 3) % 2)  # indoor < outdoor
    assert "cat, dog, fox" in b.description and "indoor, outdoor" in b.description and "6 val rows" in b.description
    # decoded, centre-cropped, resized: the class colours the top half's channel k
    top = b.train.x[:, :, :4].float().mean((2, 3))
    assert (top.argmax(1) == b.train.y).all()
    sub = build_dataset("image_folder", data_root=str(root), size=8, n_train=6, n_test=4, seed=2)
    assert len(sub.train) == 6 and len(sub.test) == 4 and set(sub.train.index.tolist()) <= set(range(18))
    assert build_dataset("image_folder", data_root=str(root), size=16, bias=None).has_bias is False


def test_image_folder_ints_codes_and_columns(tmp_path):
    cols = {"path": "img_filename", "target": "y", "bias": "place", "split": "fold"}
    root = _folder(tmp_path, names=False, codes=True, columns=cols)  # Waterbirds-like: 0/1/2 splits, int labels
    opts = dict(path="img_filename", target="y", bias="place", split="fold", size=8)
    b = build_dataset("image_folder", data_root=str(root), **opts)
    ref = build_dataset("image_folder", data_root=str(_folder(tmp_path, "ref")), size=8)
    for sp in ("train", "test"):
        for k in ("x", "y", "b", "index"):
            assert torch.equal(getattr(getattr(b, sp), k), getattr(getattr(ref, sp), k)), (sp, k)
    assert "(0, 1, 2)" in b.description
    # integers sort as numbers (2 before 10), strings as text
    lines = [ln.split(",") for ln in (root / "metadata.csv").read_text().splitlines()]
    k = lines[0].index("y")
    (root / "metadata.csv").write_text("\n".join(",".join(c[:k] + ["10" if c[k] == "2" else c[k]] + c[k + 1:])
                                                for c in lines) + "\n")
    c = build_dataset("image_folder", data_root=str(root), **opts)
    np.testing.assert_array_equal(c.train.y.numpy(), b.train.y.numpy())
    assert "(0, 1, 10)" in c.description
    with pytest.raises(DataError, match=r"no column 'path' \(option path\); columns present: img_filename, y, fold, "
                                        r"place$"):
        build_dataset("image_folder", data_root=str(root), size=8)


def test_image_folder_without_bias(tmp_path):
    b = build_dataset("image_folder", data_root=str(_folder(tmp_path, bias=False)), size=8)
    assert not b.has_bias and (b.train.b == b.train.y).all() and b.num_bias == b.num_classes == 3
    assert "no bias attribute" in b.description
    with pytest.raises(DataError, match="no column 'place'"):  # a bias column named and missing: an error
        build_dataset("image_folder", data_root=str(_folder(tmp_path, "e", bias=False)), size=8, bias="place")


def test_image_folder_parquet(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        root = _folder(tmp_path)
        (root / "metadata.parquet").write_bytes(b"PAR1 not really")
        with pytest.raises(DataError, match=r"needs pyarrow \(pip install pyarrow\)"):
            build_dataset("image_folder", data_root=str(root), metadata="metadata.parquet", size=8)
        return
    pq = build_dataset("image_folder", data_root=str(_folder(tmp_path, fmt="parquet", metadata="m.parquet")),
                       metadata="m.parquet", size=8)
    csv = build_dataset("image_folder", data_root=str(_folder(tmp_path, "c")), size=8)
    assert torch.equal(pq.train.x, csv.train.x) and torch.equal(pq.test.b, csv.test.b)


def test_image_folder_cache_follows_the_table(tmp_path, monkeypatch):
    from lrscope.train import data as D

    monkeypatch.setenv("LRSCOPE_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path)
    first = build_dataset("image_folder", data_root=str(root), size=8)
    again = build_dataset("image_folder", data_root=str(root), size=8)
    assert D.is_mapped(again.train.x) and again.has_bias and torch.equal(first.train.y, again.train.y)
    # the table edited in place (its folder's mtime stays): the cache is rebuilt
    mtime = (root).stat().st_mtime_ns
    table = root / "metadata.csv"
    table.write_text(table.read_text().replace("images/cat/img000.png,cat,", "images/cat/img000.png,fox,"))
    assert root.stat().st_mtime_ns == mtime
    edited = build_dataset("image_folder", data_root=str(root), size=8)
    assert not D.is_mapped(edited.train.x) and int(edited.train.y[0]) == 2 and int(first.train.y[0]) == 0
    assert len(list((tmp_path / "cache").glob("image_folder-*"))) == 2
    # has_bias survives the cache
    nb = _folder(tmp_path, "nb", bias=False)
    build_dataset("image_folder", data_root=str(nb), size=8)
    cached = build_dataset("image_folder", data_root=str(nb), size=8)
    assert D.is_mapped(cached.train.x) and cached.has_bias is False


def _edit(root, old, new):
    t = root / "metadata.csv"
    t.write_text(t.read_text().replace(old, new))


@pytest.mark.parametrize("edit,opts,message", [
    (None, {"metadata": "nope.csv"}, r"no metadata table .*nope\.csv .*to get it"),
    (None, {"target": "label"}, r"no column 'label' \(option target\); columns present: path, target, split, bias"),
    (lambda r: (r / "images/dog/img001.jpg").unlink(), {}, r"1 listed image file\(s\) not found, the first .*img001"),
    (lambda r: (r / "images/dog/img001.jpg").write_bytes(b"not an image"), {}, r"cannot decode image .*img001"),
    (lambda r: _edit(r, ",test,", ",holdout,"), {}, r"unknown split value\(s\) 'holdout' in column 'split'"),
    (lambda r: _edit(r, ",test,", ",val,"), {}, r"no rows in the test split \(column 'split' holds train, val only"),
    (lambda r: [_edit(r, f",{k}," , ",cat,") for k in ("dog", "fox")], {}, r"holds one class \('cat'\)"),
    (lambda r: _edit(r, ",dog,", ",,"), {}, r"row\(s\) with an empty target"),
    (lambda r: (r / "metadata.csv").write_text(""), {}, r"not a readable CSV table"),
    (None, {"path": "target"}, r"options path, target name the same column"),
    (None, {"split": " "}, r"option split must not be empty"),
])
def test_image_folder_bad_inputs(tmp_path, edit, opts, message):
    root = _folder(tmp_path)
    if edit is not None:
        edit(root)
    with pytest.raises((DataError, ConfigError), match=message) as e:
        build_dataset("image_folder", data_root=str(root), size=8, **opts)
    assert "\n" not in str(e.value)


def test_image_folder_without_bias_trains_probes_reports(tmp_path):
    """A run on your own data without a bias column: trains, its store says so, the probes that
    need a bias attribute are not defined and the rest compute, and ls and the report say so."""
    from click.testing import CliRunner

    from lrscope.cli.probe import main as lrprobe
    from lrscope.probe.runner import compute_paths

    root = _folder(tmp_path, bias=False)
    cfg = tiny_config(dataset="image_folder", model="fcn", widths=[16], data_options={"size": 8}, max_steps=6,
                      snapshot_every=2, checkpoint_every=3, probe_size=12, batch_size=8, data_root=str(root),
                      stop="max-steps")
    path = train_run(cfg, tmp_path / "runs", progress=False).path
    assert zarr.open_group(str(path), mode="r").attrs[S.ATTR_HAS_BIAS] is False
    out = compute_paths(path, progress=False)[str(path)]
    for name in ("loss_ratio", "subnetwork_gradients"):
        assert out[name] == "not defined: the data has no bias attribute", out
    for name in ("accuracy", "representation", "feature_quality", "importance", "dynamics"):
        assert out[name].startswith("computed") and "not defined" in out[name], out
    assert out["compressibility"].startswith("computed") and "not defined" not in out["compressibility"]
    ds = lrscope.open_run(path)
    assert ds.attrs["has_bias"] is False
    acc = (ds.test_logits.isel(snapshot=-1).argmax("class") == ds.test_y).mean()
    assert float(ds.unbiased_accuracy_final) == pytest.approx(float(acc))  # the plain test accuracy
    for v in ("csi_mean_final", "class_separation_final", "core_probe_error_final", "prunability"):
        assert v in ds, v
    for v in ("worst_group_accuracy_final", "average_accuracy_final", "bc_accuracy", "group_accuracy", "bsi",
              "class_neuron_survival", "spurious_probe_error", "max_loss_ratio", "importance_epoch_bc_share"):
        assert v not in ds, v
    res = CliRunner().invoke(lrprobe, ["ls", str(path)])
    assert res.exit_code == 0 and path.stem in res.output, res.output
    assert res.output.splitlines()[1].split()[4] == "-"  # worst-group: not defined
    res = CliRunner().invoke(lrprobe, ["compute", str(path), "--quiet"])
    assert res.exit_code == 0 and "loss_ratio: not defined: the data has no bias attribute" in res.output
    res = CliRunner().invoke(lrprobe, ["report", str(path), "-o", str(tmp_path / "r.html"), "--no-compute"])
    assert res.exit_code == 0, res.output
    assert "data have no bias attribute" in (tmp_path / "r.html").read_text()
    # a model soup across two LRs: its accuracy, no worst group
    from lrscope.probe import model_soup

    train_run(dataclasses.replace(cfg, lr=0.02), tmp_path / "runs", progress=False)
    soup = model_soup(lrscope.open_sweep(tmp_path / "runs", probes=False))
    assert np.isfinite(soup.soup_unbiased_accuracy).all() and np.isnan(soup.soup_worst_group_accuracy).all()
    assert np.isnan(soup.ingredient_worst_group_accuracy).all() and "no bias attribute" in soup.attrs["not_defined"]
    # a store written before has_bias existed reads as having one
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"][S.ATTR_HAS_BIAS]
    (path / "zarr.json").write_text(json.dumps(meta))
    assert lrscope.open_run(path, probes=False).attrs["has_bias"] is True
