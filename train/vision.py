"""File-based image datasets: CIFAR-10/100, MNIST-CIFAR, Corrupted CIFAR-10, CelebA, Waterbirds,
ImageNet. Each reads the layout the field already uses (DATA.md) from ``--data-root`` and returns
whole uint8 splits; the corruptions of Corrupted CIFAR-10 are implemented here with torch/numpy/
scipy (no ImageMagick; torch is imported inside the functions, as in every recipe module).
Datasets without a bias attribute (CIFAR, ImageNet, an image folder without a bias column) say so
(`DataBundle.has_bias` False) and store b = y as a placeholder: every sample is bias-aligned, the
test split is the usual one, and the probes that need a bias attribute are not defined.
``image_folder`` reads your own data: a folder of images and a metadata table (CSV or Parquet).
"""

from __future__ import annotations

import csv
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, DataError
from .recipes import (
    BASE,
    IMAGE_SIZE,
    N_SAMPLES,
    DataBundle,
    Split,
    bias_labels,
    check_sizes,
    load_base,
    option,
    pick_of_class,
    register_dataset,
    subsample,
)

if TYPE_CHECKING:
    import torch

# ------------------------------------------------------------------------------- helpers
HOW_TO_GET = {
    "cifar10": "torchvision.datasets.CIFAR10(root, download=True) on a machine with internet "
               "(expects <root>/cifar-10-batches-py/)",
    "cifar100": "torchvision.datasets.CIFAR100(root, download=True) on a machine with internet "
                "(expects <root>/cifar-100-python/)",
    "celeba": "torchvision.datasets.CelebA(root, download=True), or the files from the CelebA site "
              "(expects <root>/celeba/list_attr_celeba.txt, list_eval_partition.txt, img_align_celeba/)",
    "waterbirds": "the Waterbirds tarball of kohpangwei/group_DRO or WILDS (expects a folder with "
                  "metadata.csv: img_filename, y, split, place; give it or its parent as --data-root)",
    "imagenet": "the ILSVRC-2012 images from image-net.org, in ImageFolder layout "
                "(<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG)",
    "image_folder": "your own data: a folder of images and a metadata table naming each image's file, target, "
                    "bias (optional) and split (README: Your own data)",
}


def _root(name: str, data_root) -> Path:
    if data_root is None:
        raise DataError(f"{name} reads files: give --data-root; to get them: {HOW_TO_GET[name]}")
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"{name}: data root {root} not found; to get them: {HOW_TO_GET[name]}")
    return root


def load_cifar(name: str, data_root) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test): uint8 (n, 3, 32, 32) and int64 labels, read by
    torchvision from its batch layout (the download checksum is not enforced, so a copy made on
    another machine, or a test fixture in the same format, is accepted)."""
    import torchvision

    root = _root(name, data_root)
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    folder = root / cls.base_folder
    if not folder.is_dir():
        raise DataError(f"{name} not found under {root}: expected {folder}/; to get it: {HOW_TO_GET[name]}")

    class _Local(cls):
        def _check_integrity(self):  # presence only: no md5 of the download archive's members
            return all((Path(self.root) / self.base_folder / f).exists() for f, _ in self.train_list + self.test_list)

        def _load_meta(self):  # class names are not needed
            self.classes = []

    try:
        tr, te = _Local(str(root), train=True), _Local(str(root), train=False)
    except RuntimeError as e:
        raise DataError(f"{name} under {root} is incomplete ({e}); to get it: {HOW_TO_GET[name]}") from None
    return (tr.data.transpose(0, 3, 1, 2), np.asarray(tr.targets, np.int64),
            te.data.transpose(0, 3, 1, 2), np.asarray(te.targets, np.int64))


def decode_images(paths: list[Path], size: int, desc: str) -> np.ndarray:
    """Decode image files (JPEG, PNG, ... via Pillow) as RGB, centre-crop to a square, resize to
    size×size (antialiased): uint8 (n, 3, size, size). Threads decode in parallel (Pillow releases
    the GIL); a progress bar shows on large sets."""
    from PIL import Image
    from tqdm.auto import tqdm

    out = np.empty((len(paths), 3, size, size), np.uint8)

    def one(i):
        try:
            with Image.open(paths[i]) as im:
                im = im.convert("RGB")
                w, h = im.size
                s = min(h, w)
                left, top = (w - s) // 2, (h - s) // 2
                im = im.crop((left, top, left + s, top + s))
                if s != size:
                    im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
                out[i] = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
        except OSError as e:
            raise DataError(f"cannot decode image {paths[i]}: {e}") from None

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        list(tqdm(pool.map(one, range(len(paths))), total=len(paths), desc=desc, unit="img", leave=False,
                  disable=len(paths) < 2000))
    return out


# ------------------------------------------------------------------------------- CIFAR
def _plain(name: str, n_classes: int, data_root, seed, n_train, n_test) -> DataBundle:
    check_sizes(n_train=n_train, n_test=n_test)
    gen = np.random.default_rng([seed, 7500])
    xtr, ytr, xte, yte = load_cifar(name, data_root)
    xtr, ytr, itr = subsample(xtr, ytr, n_train, gen)
    xte, yte, ite = subsample(xte, yte, n_test, gen)
    return DataBundle(name, Split.from_numpy(xtr, ytr, ytr, itr), Split.from_numpy(xte, yte, yte, ite), n_classes,
                      n_classes, (3, 32, 32), {}, f"{name} (no bias attribute: b = y)", has_bias=False)


@register_dataset("cifar10", rho_train=None, cached=True, options={"n_train": N_SAMPLES, "n_test": N_SAMPLES})
def cifar10(*, seed: int, rho_train: float | None, data_root, n_train: int | None = None,
            n_test: int | None = None) -> DataBundle:
    """CIFAR-10 (torchvision's batch layout); no bias attribute (b = y)."""
    return _plain("cifar10", 10, data_root, seed, n_train, n_test)


@register_dataset("cifar100", rho_train=None, cached=True, options={"n_train": N_SAMPLES, "n_test": N_SAMPLES})
def cifar100(*, seed: int, rho_train: float | None, data_root, n_train: int | None = None,
             n_test: int | None = None) -> DataBundle:
    """CIFAR-100 (torchvision's layout); no bias attribute (b = y)."""
    return _plain("cifar100", 100, data_root, seed, n_train, n_test)


# ------------------------------------------------------------------------------- MNIST-CIFAR
@register_dataset("mnist_cifar", rho_train=0.1, fcn_widths=(2048, 2048), cached=True,
                  options={"base": BASE, "n_train": N_SAMPLES, "n_test": N_SAMPLES})
def mnist_cifar(*, seed: int, rho_train: float, data_root, base: str = "mnist",
                n_train: int | None = None, n_test: int | None = None) -> DataBundle:
    """MNIST-CIFAR (Shah et al. 2020, 10 classes each): an MNIST digit (spurious, top) stacked on a
    CIFAR-10 object (core, bottom), 3×64×32. Bias-conflicting samples pair the object with a digit
    of another class; the unbiased test set draws the digit's class uniformly. `base` picks the
    digit set (mnist, fashion_mnist, digits), read from the same --data-root."""
    check_sizes(n_train=n_train, n_test=n_test)
    gen = np.random.default_rng([seed, 7600])
    ctr, cytr, cte, cyte = load_cifar("cifar10", data_root)
    mtr, mytr, mte, myte = load_base(base, data_root, seed)

    def split(x, y, digits, dlabels, n, rho) -> Split:
        x, y, idx = subsample(x, y, n, gen)
        b = bias_labels(y, rho, 10, gen)
        pick = pick_of_class(dlabels, b, gen, "mnist_cifar")
        d = np.zeros((len(y), 32, 32), np.uint8)
        d[:, 2:30, 2:30] = digits[pick]
        top = np.repeat(d[:, None], 3, axis=1)
        return Split.from_numpy(np.concatenate([top, x], axis=2), y, b, idx)

    regions = {"spurious": np.zeros((3, 64, 32), bool), "core": np.zeros((3, 64, 32), bool)}
    regions["spurious"][:, :32] = True
    regions["core"][:, 32:] = True
    return DataBundle("mnist_cifar", split(ctr, cytr, mtr, mytr, n_train, rho_train),
                      split(cte, cyte, mte, myte, n_test, 0.9), 10, 10, (3, 64, 32), regions,
                      f"MNIST({base})-CIFAR-10")


# ------------------------------------------------------------------------------- corruptions
CORRUPTIONS = ("snow", "frost", "fog", "brightness", "contrast", "spatter", "elastic", "jpeg", "pixelate",
               "saturate")  # LfF's "type 0" set; bias label b = position in this tuple


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


def _fractal(n: int, size: int, gen: torch.Generator, decay: float) -> torch.Tensor:
    """Fractal (plasma-like) noise in [0, 1], (n, 1, size, size): octaves of upsampled uniform noise."""
    import torch
    import torch.nn.functional as F

    out = torch.zeros(n, 1, size, size)
    amp, res = 1.0, 2
    while res <= size:
        z = torch.rand(n, 1, res, res, generator=gen)
        out += amp * F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)
        amp *= decay
        res *= 2
    out -= out.amin((2, 3), keepdim=True)
    return out / out.amax((2, 3), keepdim=True).clamp_min(1e-8)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    import torch
    from scipy.ndimage import gaussian_filter

    return torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma))).float()


def corrupt(x: torch.Tensor, kind: str, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Apply one corruption (Hendrycks & Dietterich 2019 style formulas, severity 1-5) to float
    images in [0, 1], (n, 3, H, W)."""
    import torch
    import torch.nn.functional as F

    s = severity - 1
    n, _, h, w = x.shape
    if kind == "brightness":
        return (x + (0.1, 0.2, 0.3, 0.4, 0.5)[s]).clamp(0, 1)
    if kind == "contrast":
        c = (0.4, 0.3, 0.2, 0.1, 0.05)[s]
        m = x.mean((1, 2, 3), keepdim=True)
        return ((x - m) * c + m).clamp(0, 1)
    if kind == "saturate":
        c = (2.0, 3.0, 4.0, 6.0, 8.0)[s]
        g = _gray(x)
        return (g + (x - g) * c).clamp(0, 1)
    if kind == "fog":
        c = (0.75, 1.0, 1.25, 1.5, 2.0)[s]
        m = x.amax((1, 2, 3), keepdim=True)
        return ((x + c * _fractal(n, max(h, w), gen, 0.55)[..., :h, :w]) * m / (m + c)).clamp(0, 1)
    if kind == "frost":
        c = (0.35, 0.45, 0.55, 0.6, 0.7)[s]
        crystals = (torch.rand(n, 1, h, w, generator=gen) > 0.93).float()
        frost = _blur(crystals, 0.7) * 4 + 0.6 * _fractal(n, max(h, w), gen, 0.8)[..., :h, :w]
        frost = frost.clamp(0, 1) * torch.tensor([0.85, 0.92, 1.0]).view(1, 3, 1, 1)
        return ((1 - c * 0.6) * x + c * frost).clamp(0, 1)
    if kind == "snow":
        c = (0.1, 0.2, 0.3, 0.4, 0.5)[s]
        flakes = (torch.randn(n, 1, h, w, generator=gen) > 2.2 - 0.5 * c).float()
        from scipy.ndimage import convolve1d

        streak = torch.from_numpy(convolve1d(flakes.numpy(), np.ones(3) / 2, axis=3)).clamp(0, 1)
        x = (1 - c) * x + c * torch.maximum(x, _gray(x) * 1.5 + 0.5)
        return (x + streak + streak.flip(2) * 0.5).clamp(0, 1)
    if kind == "spatter":
        c = (0.6, 0.65, 0.7, 0.75, 0.8)[s]
        liquid = _blur(torch.rand(n, 1, h, w, generator=gen), 1.5)
        liquid = (liquid > liquid.flatten(1).quantile(c, dim=1).view(n, 1, 1, 1)).float()
        mud = torch.tensor([0.42, 0.32, 0.2]).view(1, 3, 1, 1)
        return (x * (1 - liquid) + liquid * (0.5 * x + 0.5 * mud)).clamp(0, 1)
    if kind == "elastic":
        alpha, sigma = (1.0, 1.5, 2.0, 2.5, 3.0)[s], 2.0
        disp = _blur(torch.rand(n, 2, h, w, generator=gen) * 2 - 1, sigma) * alpha * 2 / max(h, w) * 8
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        grid = torch.stack([xs, ys], -1)[None] + disp.permute(0, 2, 3, 1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    if kind == "pixelate":
        f = (0.6, 0.5, 0.4, 0.3, 0.25)[s]
        small = F.interpolate(x, size=(max(1, int(h * f)), max(1, int(w * f))), mode="area")
        return F.interpolate(small, size=(h, w), mode="nearest")
    if kind == "jpeg":
        import io

        from PIL import Image

        q = (25, 18, 15, 10, 7)[s]
        out = []
        for img in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=q)
            buf.seek(0)
            with Image.open(buf) as im:
                out.append(np.asarray(im.convert("RGB")))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255
    raise ConfigError(f"unknown corruption {kind!r}; valid: {', '.join(CORRUPTIONS)}")


@register_dataset("corrupted_cifar10", rho_train=0.1, fcn_widths=(2048, 2048), cached=True, options={
    "severity": option(int, lo=1, hi=5, help="corruption severity 1-5"), "n_train": N_SAMPLES, "n_test": N_SAMPLES,
})
def corrupted_cifar10(*, seed: int, rho_train: float, data_root, severity: int = 4,
                      n_train: int | None = None, n_test: int | None = None) -> DataBundle:
    """Corrupted CIFAR-10 (Nam et al. 2020, type 0): the object is the class, one of ten corruptions
    (snow, frost, fog, brightness, contrast, spatter, elastic, JPEG, pixelate, saturate) the bias;
    bias-aligned images get their class's corruption. Implemented with torch/scipy."""
    import torch

    check_sizes(n_train=n_train, n_test=n_test)
    if severity not in (1, 2, 3, 4, 5):
        raise ConfigError(f"corrupted_cifar10 option severity must be 1-5, got {severity}")
    gen = np.random.default_rng([seed, 7700])
    tgen = torch.Generator().manual_seed(int(gen.integers(2**31)))
    xtr, ytr, xte, yte = load_cifar("cifar10", data_root)

    def split(x, y, n, rho) -> Split:
        x, y, idx = subsample(x, y, n, gen)
        b = bias_labels(y, rho, 10, gen)
        out = np.empty_like(x)
        for k, kind in enumerate(CORRUPTIONS):
            sel = np.flatnonzero(b == k)
            for chunk in np.array_split(sel, max(1, len(sel) // 2048)):
                if len(chunk):
                    img = torch.from_numpy(x[chunk]).float() / 255
                    out[chunk] = (corrupt(img, kind, severity, tgen) * 255).round().clamp(0, 255).to(torch.uint8)
        return Split.from_numpy(out, y, b, idx)

    return DataBundle("corrupted_cifar10", split(xtr, ytr, n_train, rho_train), split(xte, yte, n_test, 0.9),
                      10, 10, (3, 32, 32), {}, f"corrupted CIFAR-10 (severity {severity})")


def _file_split(name: str, paths: list[Path], y: np.ndarray, b: np.ndarray, split_of: np.ndarray, code: int,
                n: int | None, size: int, gen: np.random.Generator) -> Split:
    """The images whose split code is `code` (a seeded subsample of n when asked), decoded."""
    pos = np.flatnonzero(split_of == code)
    if len(pos) == 0:
        raise DataError(f"{name}: no images in split {code} of its metadata")
    if n is not None and n < len(pos):
        pos = np.sort(gen.permutation(pos)[:n])
    x = decode_images([paths[i] for i in pos], size, f"{name}[{code}]")
    return Split.from_numpy(x, y[pos], b[pos], pos)


# ------------------------------------------------------------------------------- CelebA
def _read_celeba(root: Path) -> tuple[Path, list[str], np.ndarray, np.ndarray, list[str]]:
    base = root / "celeba" if (root / "celeba").is_dir() else root
    attr_f, part_f, img_dir = base / "list_attr_celeba.txt", base / "list_eval_partition.txt", base / "img_align_celeba"
    for f in (attr_f, part_f, img_dir):
        if not f.exists():
            raise DataError(f"celeba not found under {root}: missing {f.name}; to get it: {HOW_TO_GET['celeba']}")
    lines = attr_f.read_text().splitlines()
    names = lines[1].split()
    files, rows = [], []
    for ln in lines[2:]:
        if ln.strip():
            parts = ln.split()
            files.append(parts[0])
            rows.append([int(v) for v in parts[1:]])
    attrs = np.asarray(rows, dtype=np.int64)
    if attrs.ndim != 2 or attrs.shape[1] != len(names):
        raise DataError(f"{attr_f}: expected {len(names)} attribute columns per line")
    part = {}
    for ln in part_f.read_text().splitlines():
        if ln.strip():
            f, p = ln.split()
            part[f] = int(p)
    split = np.array([part.get(f, -1) for f in files])
    return img_dir, files, (attrs > 0).astype(np.int64), split, names


@register_dataset("celeba", rho_train=None, cached=True, options={
    "target": option(str, help="the class attribute (a column of list_attr_celeba.txt)"),
    "bias": option(str, help="the bias attribute"), "size": IMAGE_SIZE,
    "test_split": option(str, choices=("test", "valid")), "n_train": N_SAMPLES, "n_test": N_SAMPLES,
})
def celeba(*, seed: int, rho_train: float | None, data_root, target: str = "Blond_Hair",
           bias: str = "Male", size: int = 64, test_split: str = "test", n_train: int | None = None,
           n_test: int | None = None) -> DataBundle:
    """CelebA (torchvision's layout): target and bias attributes (default Blond_Hair / Male, Sagawa
    et al. 2020), images centre-cropped and resized to size×size; the natural correlation is kept
    (report worst-group accuracy). test_split: test | valid. The validation split is the shipped
    `valid` partition (subsampled to n_test when given) unless it serves as the test split."""
    check_sizes(n_train=n_train, n_test=n_test, size=size)
    if test_split not in ("test", "valid"):
        raise ConfigError(f"celeba option test_split must be test or valid, got {test_split!r}")
    root = _root("celeba", data_root)
    img_dir, files, attrs, part, names = _read_celeba(root)
    for nm in (target, bias):
        if nm not in names:
            raise ConfigError(f"celeba has no attribute {nm!r}; valid: {', '.join(names)}")
    ti, bi = names.index(target), names.index(bias)
    gen = np.random.default_rng([seed, 7800])

    paths = [img_dir / f for f in files]
    y, b = attrs[:, ti], attrs[:, bi]
    train = _file_split("celeba", paths, y, b, part, 0, n_train, size, gen)
    test = _file_split("celeba", paths, y, b, part, 2 if test_split == "test" else 1, n_test, size, gen)
    # the shipped validation partition, unless it is the test split (then val_fraction holds one out)
    val = _file_split("celeba", paths, y, b, part, 1, n_test, size, gen) if test_split == "test" else None
    return DataBundle("celeba", train, test, 2, 2, (3, size, size), {}, f"CelebA {target} / {bias} ({size}px)",
                      val=val)


# ------------------------------------------------------------------------------- Waterbirds
@register_dataset("waterbirds", rho_train=None, cached=True, options={
    "size": IMAGE_SIZE, "test_split": option(str, choices=("test", "val")), "n_train": N_SAMPLES, "n_test": N_SAMPLES,
})
def waterbirds(*, seed: int, rho_train: float | None, data_root, size: int = 64, test_split: str = "test",
               n_train: int | None = None, n_test: int | None = None) -> DataBundle:
    """Waterbirds (Sagawa et al. 2020; group_DRO/WILDS metadata.csv): y landbird/waterbird, bias the
    background place; natural correlation (report worst-group accuracy); images resized to size×size.
    The validation split is the shipped one (split 1, subsampled to n_test when given) unless
    test_split=val makes it the test split."""
    check_sizes(n_train=n_train, n_test=n_test, size=size)
    if test_split not in ("test", "val"):
        raise ConfigError(f"waterbirds option test_split must be test or val, got {test_split!r}")
    root = _root("waterbirds", data_root)
    cands = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    folder = next((c for c in cands if (c / "metadata.csv").exists()), None)
    if folder is None:
        raise DataError(f"waterbirds not found under {root}: no metadata.csv; to get it: {HOW_TO_GET['waterbirds']}")
    with open(folder / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"img_filename", "y", "split", "place"}
    if not rows or not need <= set(rows[0]):
        raise DataError(f"{folder / 'metadata.csv'}: expected columns {', '.join(sorted(need))}")
    files = [r["img_filename"] for r in rows]
    y = np.array([int(r["y"]) for r in rows])
    b = np.array([int(r["place"]) for r in rows])
    sp = np.array([int(r["split"]) for r in rows])
    gen = np.random.default_rng([seed, 7900])

    paths = [folder / f for f in files]
    train = _file_split("waterbirds", paths, y, b, sp, 0, n_train, size, gen)
    test = _file_split("waterbirds", paths, y, b, sp, 2 if test_split == "test" else 1, n_test, size, gen)
    # the shipped validation split, unless it is the test split (then val_fraction holds one out)
    val = _file_split("waterbirds", paths, y, b, sp, 1, n_test, size, gen) if test_split == "test" else None
    return DataBundle("waterbirds", train, test, 2, 2, (3, size, size), {}, f"Waterbirds ({size}px)", val=val)


# ------------------------------------------------------------------------------- your own data
SPLIT_CODES = {"train": 0, "0": 0, "val": 1, "valid": 1, "validation": 1, "1": 1, "test": 2, "2": 2}
COLUMN_OPTIONS = ("path", "target", "bias", "split")
SHOW_NAMES = 12  # class / bias names spelled out in the description, at most


def _check_image_folder(opts: dict) -> None:
    for k in ("metadata", *COLUMN_OPTIONS):
        if opts[k] is not None and not opts[k].strip():
            raise ConfigError(f"image_folder option {k} must not be empty")
    named = [(k, opts[k]) for k in COLUMN_OPTIONS if opts[k] is not None]
    cols = [c for _, c in named]
    if len(set(cols)) != len(cols):
        twice = sorted({c for c in cols if cols.count(c) > 1})
        raise ConfigError(f"image_folder options {', '.join(k for k, c in named if c in twice)} name the same "
                          f"column ({', '.join(map(repr, twice))}); each must be its own")


def _image_folder_files(opts: dict) -> list:
    """What the cache key stamps besides the data root: the metadata table (edited in place, its
    folder's mtime stays)."""
    root = opts.get("data_root")
    return [] if root is None else [Path(root) / opts["metadata"]]


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def read_metadata(file: Path):
    """The metadata table (pandas DataFrame): CSV (every value read as text) or Parquet (.parquet,
    .pq; needs pyarrow). DataError where it is missing or unreadable."""
    import pandas as pd

    if not file.is_file():
        raise DataError(f"image_folder: no metadata table {file} (option metadata, relative to --data-root); "
                        f"to get it: {HOW_TO_GET['image_folder']}")
    if file.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DataError(f"{file}: reading a Parquet table needs pyarrow (pip install pyarrow), or give the "
                            f"table as CSV") from None
        try:
            return pd.read_parquet(file, engine="pyarrow")
        except Exception as e:  # pyarrow's ArrowInvalid and friends: a damaged or foreign file
            raise DataError(f"{file}: not a readable Parquet table ({_one_line(e)})") from None
    try:
        return pd.read_csv(file, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise DataError(f"{file}: not a readable CSV table ({_one_line(e)})") from None


def _as_name(v) -> str | None:
    """A table value as the label's name: text stripped, ints (and integral floats, as Parquet
    stores an int column with gaps) as their digits; None where empty."""
    if v is None or isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)) or isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    v = str(v).strip()
    return v or None


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit()


def encode_labels(values, file: Path, column: str, what: str) -> tuple[np.ndarray, list[str]]:
    """Values of a label column -> codes 0..K-1 in sorted order (numeric when every value is an
    integer, else by text) and the K names."""
    names = [_as_name(v) for v in values]
    empty = [i for i, v in enumerate(names) if v is None]
    if empty:
        raise DataError(f"{file}: {len(empty)} row(s) with an empty {what} (column {column!r}), the first "
                        f"is data row {empty[0] + 1}")
    distinct = set(names)
    order = sorted(distinct, key=int) if all(_is_int(v) for v in distinct) else sorted(distinct)
    code = {v: k for k, v in enumerate(order)}
    return np.array([code[v] for v in names], dtype=np.int64), order


def _show_names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOW_NAMES])
    return shown + (f", ... ({len(names)} in all)" if len(names) > SHOW_NAMES else "")


@register_dataset("image_folder", rho_train=None, cached=True, check=_check_image_folder, stamp=_image_folder_files,
                  options={
    "metadata": option(str, help="the metadata table, relative to --data-root: CSV, or Parquet (.parquet, needs "
                                 "pyarrow)"),
    "path": option(str, help="column: the image file, relative to --data-root"),
    "target": option(str, help="column: the class (strings or ints)"),
    "bias": option(str, nullable=True, help="column: the bias attribute (strings or ints); null, or no column of "
                                            "the default name: no bias attribute"),
    "split": option(str, help="column: train / val / test, or 0 / 1 / 2 (val rows: the validation split)"),
    "size": IMAGE_SIZE, "n_train": N_SAMPLES, "n_test": N_SAMPLES,
})
def image_folder(*, seed: int, rho_train: float | None, data_root, metadata: str = "metadata.csv",
                 path: str = "path", target: str = "target", bias: str | None = "bias", split: str = "split",
                 size: int = 64, n_train: int | None = None, n_test: int | None = None) -> DataBundle:
    """Your own data: a folder of images (--data-root) and a metadata table naming, per image, its
    file (relative to the root), class, bias attribute and split; the usual shipping format of
    spurious-correlation data (Waterbirds' and WILDS' metadata.csv). The table is CSV, or Parquet
    with pyarrow installed; `metadata` names it, `path`, `target`, `bias`, `split` its columns.
    Classes and bias values may be strings or ints: each is numbered 0..K-1 in sorted order (by
    value when all are integers) and its names are kept in the description. A sample is
    bias-conflicting where its bias number differs from its class number, so order the values so
    that the k-th bias value goes with the k-th class. No bias column (the default name absent, or
    bias: null): no bias attribute, and the probes that need one are not defined. Splits: train,
    val (or valid, validation), test, or 0, 1, 2; val rows are the validation split (model
    selection; without any, the training pool gives one: val_fraction). Images are decoded with
    Pillow as RGB, centre-cropped and resized to size×size, held as uint8 and scaled to [0, 1] for
    the model, as the other image sets; n_train / n_test subsample (seeded; n_test bounds the
    validation split too). Cached, keyed also by the table's mtime and size: an edited table
    rebuilds it; an image replaced under the same name does not (touch the table)."""
    check_sizes(n_train=n_train, n_test=n_test, size=size)
    root = _root("image_folder", data_root)
    file = root / metadata
    df = read_metadata(file)
    wanted = {"path": path, "target": target, "split": split}
    if bias is not None and (bias in df.columns or bias != "bias"):
        wanted["bias"] = bias
    for opt, col in wanted.items():
        if col not in df.columns:
            raise DataError(f"{file}: no column {col!r} (option {opt}); columns present: "
                            f"{', '.join(map(str, df.columns)) or 'none'}")
    if len(df) == 0:
        raise DataError(f"{file}: the table holds no rows")
    codes = []
    for v in df[split].tolist():
        name = _as_name(v)
        codes.append(SPLIT_CODES.get(name.lower(), -1) if name is not None else -1)
    sp = np.array(codes)
    if (sp < 0).any():
        bad = sorted({str(_as_name(v)) for v, c in zip(df[split].tolist(), codes) if c < 0})
        raise DataError(f"{file}: unknown split value(s) {', '.join(map(repr, bad[:5]))} in column {split!r} "
                        f"({int((sp < 0).sum())} rows); valid: train, val, test or 0, 1, 2")
    for code, word in ((0, "train"), (2, "test")):
        if not (sp == code).any():
            found = ", ".join(w for c, w in ((0, "train"), (1, "val"), (2, "test")) if (sp == c).any())
            raise DataError(f"{file}: no rows in the {word} split (column {split!r} holds {found} only)")
    y, classes = encode_labels(df[target].tolist(), file, target, "target")
    if len(classes) < 2:
        raise DataError(f"{file}: the target column {target!r} holds one class ({classes[0]!r}); "
                        f"a classifier needs two or more")
    if len(np.unique(y[sp == 0])) < 2:
        raise DataError(f"{file}: the train split holds one class of column {target!r} "
                        f"({classes[int(y[sp == 0][0])]!r}); a classifier needs two or more")
    has_bias = "bias" in wanted
    if has_bias:
        b, bias_names = encode_labels(df[bias].tolist(), file, bias, "bias value")
        if len(bias_names) < 2:
            raise DataError(f"{file}: the bias column {bias!r} holds one value ({bias_names[0]!r}); for data without "
                            f"a bias attribute give bias: null")
    else:
        b, bias_names = y, []
    rel = [_as_name(v) for v in df[path].tolist()]
    used = np.arange(len(sp))
    if any(rel[i] is None for i in used):
        first = next(i for i in used if rel[i] is None)
        raise DataError(f"{file}: empty image path (column {path!r}) in data row {first + 1}")
    paths = [root / r if r is not None else root for r in rel]
    missing = [i for i in used if not paths[i].is_file()]
    if missing:
        raise DataError(f"{file}: {len(missing)} listed image file(s) not found, the first {paths[missing[0]]} "
                        f"(data row {missing[0] + 1}; paths are relative to --data-root)")
    gen = np.random.default_rng([seed, 8100])
    n_classes = len(classes)
    num_bias = len(bias_names) if has_bias else n_classes
    train = _file_split("image_folder", paths, y, b, sp, 0, n_train, size, gen)
    test = _file_split("image_folder", paths, y, b, sp, 2, n_test, size, gen)
    val = _file_split("image_folder", paths, y, b, sp, 1, n_test, size, gen) if (sp == 1).any() else None
    where = f"{root.name}/{metadata}"
    desc = (f"image folder {where}: {n_classes} classes of {target!r} ({_show_names(classes)}); "
            + (f"bias {bias!r}: {_show_names(bias_names)}" if has_bias else "no bias attribute (b = y)")
            + f"; {size}px" + (f"; {len(val)} val rows: the validation split" if val is not None else ""))
    return DataBundle("image_folder", train, test, n_classes, num_bias, (3, size, size), {}, desc, has_bias=has_bias,
                      val=val)


# ------------------------------------------------------------------------------- ImageNet
IMG_EXT = (".jpeg", ".jpg", ".png")


@register_dataset("imagenet", rho_train=None, cached=True, options={
    "size": IMAGE_SIZE, "per_class_train": N_SAMPLES, "per_class_test": N_SAMPLES,
    "classes": option(int, lo=1, hi=2**20, nullable=True, help="keep the first N classes (null: all)"),
})
def imagenet(*, seed: int, rho_train: float | None, data_root, size: int = 64,
             per_class_train: int | None = None, per_class_test: int | None = None,
             classes: int | None = None) -> DataBundle:
    """ImageNet in ImageFolder layout (train/<wnid>/, val/<wnid>/), resized to size×size and held in
    memory as uint8; `classes` keeps the first N classes, per_class_* subsample; no bias (b = y)."""
    check_sizes(size=size, per_class_train=per_class_train, per_class_test=per_class_test, classes=classes)
    root = _root("imagenet", data_root)
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataError(f"imagenet not found under {root}: missing {sub}/; to get it: {HOW_TO_GET['imagenet']}")
    wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if classes is not None:
        wnids = wnids[:classes]
    if not wnids:
        raise DataError(f"imagenet under {root}: train/ holds no class folders")
    gen = np.random.default_rng([seed, 8000])

    def split(sub: str, per) -> Split:
        paths, labels = [], []
        for k, wn in enumerate(wnids):
            fs = sorted(p for p in (root / sub / wn).glob("*") if p.suffix.lower() in IMG_EXT) \
                if (root / sub / wn).is_dir() else []
            if per is not None and per < len(fs):
                fs = [fs[i] for i in np.sort(gen.permutation(len(fs))[:per])]
            paths += fs
            labels += [k] * len(fs)
        if not paths:
            raise DataError(f"imagenet under {root}: no images in {sub}/")
        y = np.asarray(labels)
        return Split.from_numpy(decode_images(paths, size, f"imagenet/{sub}"), y, y, np.arange(len(y)))

    return DataBundle("imagenet", split("train", per_class_train), split("val", per_class_test), len(wnids),
                      len(wnids), (3, size, size), {}, f"ImageNet {len(wnids)} classes ({size}px)", has_bias=False)
