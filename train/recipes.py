"""What a dataset recipe module needs, and all it imports from lrscope: the registry entry and its
decorator, shared option declarations, the split containers, and the helpers several recipes
share (labels with an exact bias-conflicting fraction, subsampling, the digit-like base sets).

A recipe is a builder function registered with ``@register_dataset``: its docstring is the
description `lrtrain datasets` prints, its keyword defaults are the options' defaults. Recipe
modules import torch inside their functions, never at the top: the registry's metadata must load
without it (`lrtrain datasets` answers at once; tests/test_declarations.py checks). `train/data.py`
imports every recipe module (`RECIPE_MODULES`), builds and caches.
"""

from __future__ import annotations

import gzip
import inspect
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from ..errors import ConfigError, DataError
from .checks import option

if TYPE_CHECKING:
    import torch


# ------------------------------------------------------------------------------- splits
@dataclass
class Split:
    x: torch.Tensor  # raw inputs: float32 (synthetic) or uint8 (images), (N, *input_shape)
    y: torch.Tensor  # int64 class label
    b: torch.Tensor  # int64 bias label
    index: torch.Tensor  # int64 position in the source dataset

    @classmethod
    def from_numpy(cls, x: np.ndarray, y: np.ndarray, b: np.ndarray, index: np.ndarray) -> "Split":
        import torch

        return cls(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)),
                   torch.from_numpy(b.astype(np.int64)), torch.from_numpy(index.astype(np.int64)))

    @property
    def bias_conflicting(self) -> torch.Tensor:
        return self.y != self.b

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataBundle:
    name: str
    train: Split
    test: Split
    num_classes: int
    num_bias: int
    input_shape: tuple[int, ...]
    regions: dict[str, np.ndarray] = field(default_factory=dict)  # name -> bool mask of input_shape
    description: str = ""
    # False: the data has no bias attribute (b = y is stored as a placeholder); the probes that
    # need one (group accuracies, BC/BA loss ratios, BSI, ...) are then "not defined"
    has_bias: bool = True
    # the validation split (model selection, probe/selection.py): the dataset's own where it ships
    # one (Waterbirds, CelebA, image_folder's val rows), else held out of the training pool by
    # `train.data.hold_out_validation` (RunConfig.val_fraction); None: the run has none
    val: Split | None = None

    def group(self, split: Split) -> torch.Tensor:
        return split.y * self.num_bias + split.b

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits this bundle holds: train, test and, where it has one, val."""
        return ("train", "test", "val") if self.val is not None else ("train", "test")

    @property
    def num_groups(self) -> int:
        return self.num_classes * self.num_bias


def _as_numpy(v, what: str) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array (DataError when it is neither)."""
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # a torch tensor, without importing torch here
        v = v.detach().cpu().numpy()
    try:
        arr = np.asarray(v)
    except Exception as e:  # ragged lists, objects numpy cannot hold
        raise DataError(f"{what}: not an array ({type(e).__name__}: {e})") from None
    if arr.dtype == object:
        raise DataError(f"{what}: not a numeric array (dtype object)")
    return arr


def _labels(v, what: str, n: int) -> np.ndarray:
    arr = _as_numpy(v, what)
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"{what}: expected {n} labels (one per input, a 1-D array), got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise DataError(f"{what}: labels must be integers (class numbers 0, 1, ...), got dtype {arr.dtype}")
    if n and arr.min() < 0:
        raise DataError(f"{what}: labels must be >= 0, got {int(arr.min())}")
    if n and arr.max() >= MAX_SAMPLES:
        raise DataError(f"{what}: label {int(arr.max())} is not a class number (at most {MAX_SAMPLES - 1})")
    return arr.astype(np.int64)


def bundle_from_arrays(train, test, *, name: str = "data", num_classes: int | None = None,
                       num_bias: int | None = None, description: str = "") -> DataBundle:
    """A `DataBundle` from in-memory data, for recording a loop of one's own (`lrscope.Recorder`).

    `train` and `test` are ``(x, y, b)`` tuples of tensors or arrays: inputs ``x`` (N, ...) as
    float (stored as float32) or uint8 (images; lrscope's own forward passes see them scaled to
    [0, 1], as the built-in loop's do), integer class labels ``y`` (N,), and integer bias labels
    ``b`` (N,) or None when the data has no bias attribute (then b = y is stored as a placeholder,
    `has_bias` is False and the probes that need a bias call those quantities not defined). The
    sample ids a loop hands to the recorder are positions in `train`'s x. `num_classes` /
    `num_bias` default to the largest label + 1. Mismatched lengths, shapes or dtypes are a
    one-line `DataError`."""
    import torch

    from ..store.schema import NAME_RE

    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DataError(f"the data's name must be letters, digits and _ . - (starting with a letter), got {name!r}")
    parts = {}
    for split, value in (("train", train), ("test", test)):
        if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
            raise DataError(f"{split}: expected a tuple (x, y, b) (b may be None), got {type(value).__name__}"
                            + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""))
        x, y, b = (*value, None) if len(value) == 2 else value
        x = _as_numpy(x, f"{split} x")
        if x.ndim < 2 or len(x) == 0:
            raise DataError(f"{split} x: expected inputs of shape (N, ...) with N >= 1, got shape {x.shape}")
        if x.dtype.kind not in "fiu":
            raise DataError(f"{split} x: inputs must be float or uint8 numbers, got dtype {x.dtype}")
        if x.dtype != np.uint8:
            if x.dtype.kind in "iu":
                raise DataError(f"{split} x: integer inputs must be uint8 (images, scaled to [0, 1] by lrscope's "
                                f"forward passes) or converted to float, got dtype {x.dtype}")
            x = x.astype(np.float32)
            if not np.isfinite(x).all():
                raise DataError(f"{split} x: inputs must be finite (NaN or inf found)")
        y = _labels(y, f"{split} y", len(x))
        b = None if b is None else _labels(b, f"{split} b", len(x))
        parts[split] = (x, y, b)
    (xtr, ytr, btr), (xte, yte, bte) = parts["train"], parts["test"]
    if (btr is None) != (bte is None):
        raise DataError("bias labels b must be given for both train and test, or for neither (None)")
    if xtr.shape[1:] != xte.shape[1:] or xtr.dtype != xte.dtype:
        raise DataError(f"train and test inputs differ: {xtr.shape[1:]} {xtr.dtype} vs {xte.shape[1:]} {xte.dtype}")
    has_bias = btr is not None
    if not has_bias:
        btr, bte = ytr, yte
    seen_c = int(max(ytr.max(), yte.max())) + 1
    c = seen_c if num_classes is None else num_classes
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 2 or c < seen_c:
        raise DataError(f"num_classes must be an integer >= 2 and above every label (largest label {seen_c - 1}), "
                        f"got {c}")
    seen_b = int(max(btr.max(), bte.max())) + 1
    nb = (seen_b if has_bias else c) if num_bias is None else num_bias
    if isinstance(nb, bool) or not isinstance(nb, (int, np.integer)) or nb < 1 or nb < seen_b:
        raise DataError(f"num_bias must be an integer >= 1 and above every bias label (largest {seen_b - 1}), got {nb}")
    splits = {}
    for split, (x, y, b) in (("train", (xtr, ytr, btr)), ("test", (xte, yte, bte))):
        splits[split] = Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), torch.from_numpy(b),
                              torch.arange(len(y), dtype=torch.int64))
    return DataBundle(name, splits["train"], splits["test"], int(c), int(nb), tuple(int(d) for d in xtr.shape[1:]),
                      description=description or f"{name} (in-memory arrays)", has_bias=has_bias)


# ------------------------------------------------------------------------------- the registry
MAX_SAMPLES = 2**24  # n_train / n_test / per-class counts (ImageNet's 1.28M fits)
MAX_IMAGE_SIZE = 2048
# keyword arguments builders take that are config fields, not data options
RESERVED = {"seed": "data_seed", "rho_train": "bias_conflicting_ratio", "data_root": "data_root"}


# shared declarations
RHO_TEST = option(float, lo=0, hi=1, help="bias-conflicting fraction of the test split")
N_SAMPLES = option(int, lo=1, hi=MAX_SAMPLES, nullable=True, help="subsample to this many (null: all)")
IMAGE_SIZE = option(int, lo=1, hi=MAX_IMAGE_SIZE, help="images are resized to size x size")


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset, declared once: `lrtrain datasets` prints it, `build_dataset` builds from it."""

    name: str
    build: Callable[..., DataBundle]  # keywords: seed, rho_train, data_root (when reads_files), the options
    description: str  # the builder's docstring
    rho_train: float | None  # the paper's bias-conflicting training fraction; None: a natural bias, or none
    options: Mapping[str, dict]  # option -> its declaration (`option`)
    defaults: Mapping[str, Any]  # option -> the builder's default
    cached: bool = False  # built splits are kept on disk (slow builds)
    check: Callable[[dict], None] | None = None  # a check of the options together (over the defaults)
    reads_files: bool = False  # takes --data-root
    # files whose (mtime, size) join the cache key besides the data root's: (options with data_root)
    # -> paths, e.g. a metadata table edited in place (which leaves its folder's mtime alone)
    stamp: Callable[[dict], list] | None = None
    # the hidden widths of the paper's FCN for this dataset (Barsbey et al. 2025, supplement C):
    # what `--model fcn` trains when --widths is not given; None: the FCN's own default by input shape
    fcn_widths: tuple[int, ...] | None = None
    # it draws its samples from a distribution (synthetic sets: n_train is any size): its validation
    # split is a further draw of the training distribution, the training split keeping n_train
    draws: bool = False


DATASETS: dict[str, DatasetEntry] = {}


def dataset_entry(fn, *, name: str, rho_train: float | None, options: dict[str, dict] | None = None,
                  cached: bool = False, check: Callable[[dict], None] | None = None,
                  stamp: Callable[[dict], list] | None = None,
                  fcn_widths: tuple[int, ...] | None = None, draws: bool = False) -> DatasetEntry:
    """The registry entry of builder `fn` under `name`, its declared options checked against the
    keywords it takes (a TypeError when they differ: a programming error). `register_dataset` puts
    it in DATASETS; a plugin's builder carries it (train/plugins.py: `plugin_dataset`)."""
    options = dict(options or {})
    params = inspect.signature(fn).parameters
    taken = [p for p in params if p not in RESERVED]
    if sorted(taken) != sorted(options):  # a programming error: declared and taken options differ
        raise TypeError(f"dataset {name!r}: declared options {sorted(options)} != builder's {sorted(taken)}")
    defaults = {k: params[k].default for k in options if params[k].default is not inspect.Parameter.empty}
    return DatasetEntry(name, fn, inspect.cleandoc(fn.__doc__ or ""), rho_train, options, defaults, cached, check,
                        "data_root" in params, stamp, None if fcn_widths is None else tuple(fcn_widths), draws)


def register_dataset(name: str, *, rho_train: float | None, options: dict[str, dict], cached: bool = False,
                     check: Callable[[dict], None] | None = None, stamp: Callable[[dict], list] | None = None,
                     fcn_widths: tuple[int, ...] | None = None, draws: bool = False):
    """Register a dataset builder under `name`. `options` declares every keyword the builder
    takes besides seed, rho_train and data_root (type and range; the default is the builder's),
    so that data options are checked before anything is built; `check` checks them together;
    `cached`: built splits are kept on disk, keyed by the options, the data root and its mtime,
    and the mtime and size of the files `stamp(options)` names (files edited in place);
    `fcn_widths`: the hidden widths of the paper's FCN for this dataset (`--model fcn`'s default);
    `draws`: the builder draws n_train samples from a distribution (its validation split is drawn too)."""
    def deco(fn):
        e = dataset_entry(fn, name=name, rho_train=rho_train, options=options, cached=cached, check=check,
                          stamp=stamp, fcn_widths=fcn_widths, draws=draws)
        if name in DATASETS:
            raise TypeError(f"dataset {name!r} registered twice")
        DATASETS[name] = e
        return fn

    return deco


# ------------------------------------------------------------------------------- labels
def exact_bc_mask(n: int, rho: float, gen: np.random.Generator) -> np.ndarray:
    """Exactly round(rho * n) bias-conflicting samples, at random positions."""
    mask = np.zeros(n, dtype=bool)
    mask[gen.permutation(n)[: int(round(rho * n))]] = True
    return mask


def balanced_labels(n: int, rho: float, n_classes: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Balanced class labels y; b = y on bias-aligned samples, another class uniformly on
    bias-conflicting ones (for binary tasks: the other class)."""
    y = gen.permutation(np.arange(n) % n_classes)
    bc = exact_bc_mask(n, rho, gen)
    shift = gen.integers(1, n_classes, size=n)
    b = np.where(bc, (y + shift) % n_classes, y)
    return y.astype(np.int64), b.astype(np.int64)


def bias_labels(y: np.ndarray, rho: float, n_classes: int, gen: np.random.Generator) -> np.ndarray:
    """b = y except on exactly round(rho·n) samples, where b is one of the other classes."""
    n = len(y)
    bc = np.zeros(n, dtype=bool)
    bc[gen.permutation(n)[: int(round(rho * n))]] = True
    return np.where(bc, (y + gen.integers(1, n_classes, size=n)) % n_classes, y).astype(np.int64)


def subsample(x, y, n, gen):
    """A seeded subsample of n (x, y) pairs in their order, with their positions (all: n None)."""
    if n is None or n >= len(y):
        return x, y, np.arange(len(y))
    idx = np.sort(gen.permutation(len(y))[:n])
    return x[idx], y[idx], idx


def check_sizes(**kw):
    for nm, v in kw.items():
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ConfigError(f"option {nm} must be an integer >= 1, got {v}")


def pick_of_class(labels: np.ndarray, wanted: np.ndarray, gen: np.random.Generator, name: str) -> np.ndarray:
    """For each wanted class, a random position in `labels` holding it (a partner digit)."""
    by_class = [np.flatnonzero(labels == k) for k in range(10)]
    if any(len(c) == 0 for c in by_class):
        raise DataError(f"{name} needs every digit class in the base set")
    return np.array([gen.choice(by_class[k]) for k in wanted], dtype=np.int64)


# ------------------------------------------------------------------------------- digit-like base sets
# ``mnist`` and ``fashion_mnist`` from IDX files (the format torchvision and Debian's
# ``dataset-fashion-mnist`` ship: ``train-images-idx3-ubyte[.gz]`` etc.), and ``digits``,
# scikit-learn's bundled 8×8 digits upsampled to 28×28 (for tiny tests, no files needed).
BASES = ("mnist", "fashion_mnist", "digits")
BASE = option(str, choices=BASES, help="the digit-like base set")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
TV_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
HOW_TO_GET_BASE = {
    "mnist": "download the four IDX files (train-images-idx3-ubyte.gz, ...) from the MNIST site, or "
             "torchvision.datasets.MNIST(root, download=True) on a machine with internet",
    "fashion_mnist": "apt-get install dataset-fashion-mnist (Debian/Ubuntu), or "
                     "torchvision.datasets.FashionMNIST(root, download=True) on a machine with internet",
}


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
                    f"in the folder or in <root>/{TV_FOLDER[name]}/raw/; to get them: {HOW_TO_GET_BASE[name]}")


def load_digits_base(seed: int = 0) -> tuple[np.ndarray, ...]:
    """scikit-learn's 1797 8×8 digits, upsampled to 28×28 uint8, split 1500 / 297 (seeded)."""
    import torch
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
