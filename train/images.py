"""MNIST-style spurious-correlation recipes (Colored MNIST, Double MNIST) on a digit-like base set.

Base sets: ``mnist`` and ``fashion_mnist`` from IDX files (the format torchvision and Debian's
``dataset-fashion-mnist`` ship: ``train-images-idx3-ubyte[.gz]`` etc.), and ``digits``,
scikit-learn's bundled 8×8 digits upsampled to 28×28 (for tiny tests, no files needed).
Recipes follow DATA.md: Colored MNIST after Nam et al. 2020 (LfF), Double MNIST after Barsbey et al.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .data import N_SAMPLES, DataBundle, Split, option, register_dataset

BASES = ("mnist", "fashion_mnist", "digits")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
TV_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
HOW_TO_GET = {
    "mnist": "download the four IDX files (train-images-idx3-ubyte.gz, ...) from the MNIST site, or "
             "torchvision.datasets.MNIST(root, download=True) on a machine with internet",
    "fashion_mnist": "apt-get install dataset-fashion-mnist (Debian/Ubuntu), or "
                     "torchvision.datasets.FashionMNIST(root, download=True) on a machine with internet",
}

# One colour per class (RGB in [0, 1]): ten well-separated hues, as in LfF's Colored MNIST.
COLORS = np.array([
    [0.90, 0.10, 0.29], [0.24, 0.71, 0.29], [1.00, 0.88, 0.10], [0.00, 0.51, 0.78], [0.96, 0.51, 0.19],
    [0.57, 0.12, 0.71], [0.27, 0.94, 0.94], [0.94, 0.20, 0.90], [0.82, 0.96, 0.24], [0.98, 0.75, 0.75],
], dtype=np.float32)


# ------------------------------------------------------------------------------- IDX files
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 2051 images (n, rows, cols), 2049 labels (n,)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise DataError(f"{path}: too short for an IDX file")
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        arr = np.frombuffer(data, dtype=np.uint8, offset=16)
        if arr.size != n * rows * cols:
            raise DataError(f"{path}: IDX image file holds {arr.size} bytes, header says {n}x{rows}x{cols}")
        return arr.reshape(n, rows, cols)
    if magic == 2049:
        arr = np.frombuffer(data, dtype=np.uint8, offset=8)
        if arr.size != n:
            raise DataError(f"{path}: IDX label file holds {arr.size} labels, header says {n}")
        return arr.astype(np.int64)
    raise DataError(f"{path}: not an IDX file (magic {magic})")


def _find(root: Path, stem: str) -> Path | None:
    for folder in (root, *(root / v / "raw" for v in TV_FOLDER.values())):
        for name in (stem, stem + ".gz"):
            if (folder / name).exists():
                return folder / name
    return None


def load_idx_base(name: str, data_root: str | os.PathLike | None) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) as uint8 images (n, 28, 28) and int64 labels."""
    roots = []
    if data_root is not None:
        roots += [Path(data_root), Path(data_root) / name, Path(data_root) / TV_FOLDER[name] / "raw"]
    if name == "fashion_mnist":
        roots.append(DEBIAN_FASHION)
    for root in roots:
        files = [_find(root, f"{split}-{kind}-idx{d}-ubyte") for split in ("train", "t10k")
                 for kind, d in (("images", 3), ("labels", 1))]
        if all(files):
            xtr, ytr, xte, yte = (read_idx(f) for f in files)
            if len(xtr) != len(ytr) or len(xte) != len(yte):
                raise DataError(f"{root}: image and label counts differ")
            return xtr, ytr, xte, yte
    where = data_root if data_root is not None else "(no --data-root given)"
    raise DataError(f"{name} not found under {where}: expected train-images-idx3-ubyte[.gz], "
                    f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] "
                    f"in the folder or in <root>/{TV_FOLDER[name]}/raw/; to get them: {HOW_TO_GET[name]}")


def load_digits_base(seed: int = 0) -> tuple[np.ndarray, ...]:
    """scikit-learn's 1797 8×8 digits, upsampled to 28×28 uint8, split 1500 / 297 (seeded)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    y = d.target.astype(np.int64)
    perm = np.random.default_rng([seed, 7200]).permutation(len(y))
    tr, te = perm[:1500], perm[1500:]
    return x[tr], y[tr], x[te], y[te]


def load_base(base: str, data_root, seed: int) -> tuple[np.ndarray, ...]:
    if base not in BASES:
        raise ConfigError(f"unknown base set {base!r}; valid: {', '.join(BASES)}")
    if base == "digits":
        return load_digits_base(seed)
    return load_idx_base(base, data_root)


# ------------------------------------------------------------------------------- recipes
def _bias_labels(y: np.ndarray, rho: float, n_classes: int, gen: np.random.Generator) -> np.ndarray:
    """b = y except on exactly round(rho·n) samples, where b is one of the other classes."""
    n = len(y)
    bc = np.zeros(n, dtype=bool)
    bc[gen.permutation(n)[: int(round(rho * n))]] = True
    return np.where(bc, (y + gen.integers(1, n_classes, size=n)) % n_classes, y).astype(np.int64)


def _subsample(x, y, n, gen):
    if n is None or n >= len(y):
        return x, y, np.arange(len(y))
    idx = np.sort(gen.permutation(len(y))[:n])
    return x[idx], y[idx], idx


def _check_sizes(**kw):
    for nm, v in kw.items():
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ConfigError(f"option {nm} must be an integer >= 1, got {v}")


def _pick_of_class(labels: np.ndarray, wanted: np.ndarray, gen: np.random.Generator, name: str) -> np.ndarray:
    """For each wanted class, a random position in `labels` holding it (a partner digit)."""
    by_class = [np.flatnonzero(labels == k) for k in range(10)]
    if any(len(c) == 0 for c in by_class):
        raise DataError(f"{name} needs every digit class in the base set")
    return np.array([gen.choice(by_class[k]) for k in wanted], dtype=np.int64)


BASE = option(str, choices=BASES, help="the digit-like base set")


@register_dataset("colored_mnist", rho_train=0.025, cache=True, options={
    "base": BASE, "n_train": N_SAMPLES, "n_test": N_SAMPLES,
    "color_std": option(float, lo=0, hi=1, help="std of the Gaussian colour jitter"),
})
def colored_mnist(*, seed: int = 0, rho_train: float = 0.025, base: str = "mnist", data_root=None,
                  n_train: int | None = None, n_test: int | None = None, color_std: float = 0.005) -> DataBundle:
    """Colored MNIST (Nam et al. 2020): the digit (shape) is the class, its colour the bias.

    The foreground is multiplied by the class's colour (+ Gaussian jitter of std `color_std`);
    bias-conflicting training samples take one of the other 9 colours; the unbiased test set
    draws the colour uniformly over all 10 (so 90 % of it is bias-conflicting)."""
    _check_sizes(n_train=n_train, n_test=n_test)
    gen = np.random.default_rng([seed, 7300])
    xtr, ytr, xte, yte = load_base(base, data_root, seed)

    def split(x, y, n, rho) -> Split:
        x, y, idx = _subsample(x, y, n, gen)
        b = _bias_labels(y, rho, 10, gen)
        col = COLORS[b] + color_std * gen.standard_normal((len(b), 3)).astype(np.float32)
        img = (x.astype(np.float32) / 255.0)[:, None] * np.clip(col, 0, 1)[:, :, None, None]
        return Split.from_numpy((img * 255).round().astype(np.uint8), y, b, idx)

    return DataBundle("colored_mnist", split(xtr, ytr, n_train, rho_train), split(xte, yte, n_test, 0.9),
                      10, 10, (3, 28, 28), {}, f"colored {base}")


@register_dataset("double_mnist", rho_train=0.025, cache=True, options={
    "base": BASE, "n_train": N_SAMPLES, "n_test": N_SAMPLES,
    "dim": option(float, lo=0, hi=1, lo_open=True, help="brightness of the left (core) digit"),
})
def double_mnist(*, seed: int = 0, rho_train: float = 0.025, base: str = "mnist", data_root=None,
                 n_train: int | None = None, n_test: int | None = None, dim: float = 0.5) -> DataBundle:
    """Double MNIST (Barsbey et al.): two digits side by side; the left one is the class (core),
    the right one, brighter (the left is scaled by `dim`), is the bias (spurious). Bias-conflicting
    samples pair the left digit with a right digit of another class; the unbiased test set draws
    the right digit's class uniformly. Regions: left half core, right half spurious."""
    _check_sizes(n_train=n_train, n_test=n_test)
    if not 0 < dim <= 1:
        raise ConfigError(f"double_mnist option dim must be in (0, 1], got {dim}")
    gen = np.random.default_rng([seed, 7400])
    xtr, ytr, xte, yte = load_base(base, data_root, seed)

    def split(x, y, n, rho) -> Split:
        xs, ys, idx = _subsample(x, y, n, gen)
        b = _bias_labels(ys, rho, 10, gen)
        right = x[_pick_of_class(y, b, gen, "double_mnist")]  # partner digits from the same split
        left = (xs.astype(np.float32) * dim).round().astype(np.uint8)
        img = np.concatenate([left, right], axis=2)[:, None]  # (n, 1, 28, 56)
        return Split.from_numpy(img, ys, b, idx)

    regions = {"core": np.zeros((1, 28, 56), bool), "spurious": np.zeros((1, 28, 56), bool)}
    regions["core"][..., :28] = True
    regions["spurious"][..., 28:] = True
    return DataBundle("double_mnist", split(xtr, ytr, n_train, rho_train), split(xte, yte, n_test, 0.9),
                      10, 10, (1, 28, 56), regions, f"double {base}")
