"""Dataset registry. Every dataset yields whole splits as tensors (airbench-style: no per-sample
``__getitem__``; the training loop batches by index), with a class label y, a bias label b,
the bias-conflicting flag, the (y, b) group, and optional input-region masks (core / spurious /
noise) for attribution shares.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError


@dataclass
class Split:
    x: torch.Tensor  # raw inputs: float32 (synthetic) or uint8 (images), (N, *input_shape)
    y: torch.Tensor  # int64 class label
    b: torch.Tensor  # int64 bias label
    index: torch.Tensor  # int64 position in the source dataset

    @classmethod
    def from_numpy(cls, x: np.ndarray, y: np.ndarray, b: np.ndarray, index: np.ndarray) -> "Split":
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

    def group(self, split: Split) -> torch.Tensor:
        return split.y * self.num_bias + split.b

    @property
    def num_groups(self) -> int:
        return self.num_classes * self.num_bias


def as_model_input(x: torch.Tensor) -> torch.Tensor:
    """Raw stored inputs -> float model inputs (uint8 images are scaled to [0, 1])."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


# ------------------------------------------------------------------------------- registry
DATASETS: dict[str, Callable[..., DataBundle]] = {}
DEFAULT_RHO: dict[str, float | None] = {}  # None: a natural bias (or none), not a recipe's knob
CACHED: set[str] = set()
CACHE_VERSION = 1  # bump when a cached recipe's output changes
# name -> option -> its declaration (check_value's keywords: kind, lo, hi, choices, nullable, ...)
DATA_OPTIONS: dict[str, dict[str, dict]] = {}
# name -> a check of the options together (given over defaults), raising ConfigError
DATA_CHECKS: dict[str, Callable[[dict], None]] = {}
# keyword arguments every builder takes that are config fields, not data options
RESERVED = {"seed": "data_seed", "rho_train": "bias_conflicting_ratio", "data_root": "data_root"}

MAX_SAMPLES = 2**24  # n_train / n_test / per-class counts (ImageNet's 1.28M fits)
MAX_IMAGE_SIZE = 2048


def option(kind: type, *, lo=None, hi=None, lo_open=False, hi_open=False, choices=None, nullable=False,
           help: str = "") -> dict:
    """A data option's declaration: its type, range or choices (check_value's keywords)."""
    return {"kind": kind, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices,
            "nullable": nullable, "help": help}


# shared declarations
RHO_TEST = option(float, lo=0, hi=1, help="bias-conflicting fraction of the test split")
N_SAMPLES = option(int, lo=1, hi=MAX_SAMPLES, nullable=True, help="subsample to this many (null: all)")
IMAGE_SIZE = option(int, lo=1, hi=MAX_IMAGE_SIZE, help="images are resized to size x size")


def register_dataset(name: str, rho_train: float | None, cache: bool = False, *, options: dict[str, dict],
                     check: Callable[[dict], None] | None = None):
    """Register a dataset builder; `cache`: its built splits are kept on disk (slow builds).
    `options` declares every keyword the builder takes besides seed, rho_train and data_root
    (type and range), so that data options are checked before anything is built; `check`
    checks them together."""
    def deco(fn):
        import inspect

        params = [p for p in inspect.signature(fn).parameters if p not in RESERVED]
        if sorted(params) != sorted(options):  # a programming error: declared and taken options differ
            raise TypeError(f"dataset {name!r}: declared options {sorted(options)} != builder's {sorted(params)}")
        DATASETS[name] = fn
        DEFAULT_RHO[name] = rho_train
        DATA_OPTIONS[name] = options
        if check is not None:
            DATA_CHECKS[name] = check
        if cache:
            CACHED.add(name)
        return fn

    return deco


def check_data_options(name: str, options: dict) -> dict:
    """Raise ConfigError unless `options` are valid data options of dataset `name` (known names,
    types, ranges, and the dataset's own joint rules); nothing is built. Returns the options
    over the builder's defaults."""
    import inspect

    from .config import check_value

    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    check_value("data_options", options, dict)
    specs = DATA_OPTIONS[name]
    for k in options:
        if k in RESERVED:
            raise ConfigError(f"{k!r} is not a data option: it is set by the config field {RESERVED[k]} "
                              f"(--{RESERVED[k].replace('_', '-')})")
    unknown = sorted(set(options) - set(specs))
    if unknown:
        valid = ", ".join(specs) if specs else "none"
        raise ConfigError(f"unknown data option(s) {', '.join(unknown)} for {name!r}; valid: {valid}")
    for k, v in options.items():
        check_value(f"{name} option {k}", v, **specs[k], choice_label=k)
    params = inspect.signature(DATASETS[name]).parameters
    merged = {k: p.default for k, p in params.items() if k in specs and p.default is not inspect.Parameter.empty}
    merged.update(options)
    if name in DATA_CHECKS:
        DATA_CHECKS[name](merged)
    return merged


def cache_dir() -> Path | None:
    """Where built datasets are cached: $LRSCOPE_CACHE (\"off\" disables), else
    $XDG_CACHE_HOME/lrscope/datasets (~/.cache/lrscope/datasets)."""
    env = os.environ.get("LRSCOPE_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("off", "0", "") else Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lrscope" / "datasets"


def _cache_key(name: str, seed: int, rho, options: dict) -> str:
    opts = dict(options)
    root = opts.pop("data_root", None)
    stamp = None
    if root is not None:
        root = str(Path(root).resolve())
        try:
            stamp = os.stat(root).st_mtime_ns  # files added or removed under the root: rebuild
        except OSError:
            stamp = None
    blob = json.dumps([CACHE_VERSION, name, seed, rho, opts, root, stamp], sort_keys=True, default=str)
    return f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}.npz"


def _save_cached(path: Path, b: DataBundle) -> None:
    arrays = {f"{sp}_{k}": getattr(getattr(b, sp), k).numpy() for sp in ("train", "test")
              for k in ("x", "y", "b", "index")}
    arrays.update({f"region_{k}": v for k, v in b.regions.items()})
    meta = {"name": b.name, "num_classes": b.num_classes, "num_bias": b.num_bias,
            "input_shape": list(b.input_shape), "description": b.description, "regions": list(b.regions)}
    arrays["meta"] = np.array(json.dumps(meta))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache is not an error: the next run rebuilds
        pass


def _load_cached(path: Path) -> DataBundle | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            sp = {s: Split(*(torch.from_numpy(z[f"{s}_{k}"]) for k in ("x", "y", "b", "index")))
                  for s in ("train", "test")}
            regions = {k: z[f"region_{k}"] for k in meta["regions"]}
    except (OSError, ValueError, KeyError):
        return None
    return DataBundle(meta["name"], sp["train"], sp["test"], meta["num_classes"], meta["num_bias"],
                      tuple(meta["input_shape"]), regions, meta["description"])


def build_dataset(name: str, *, seed: int = 0, bias_conflicting_ratio: float | None = None,
                  data_root: str | None = None, **options) -> DataBundle:
    """Build a dataset by name. ``options`` are the dataset's own knobs (sizes, bits, base set, ...);
    ``data_root`` is passed to the datasets that read files."""
    import inspect

    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    if DEFAULT_RHO[name] is None and bias_conflicting_ratio is not None:
        raise ConfigError(f"{name!r} has no bias-conflicting ratio to set (its bias is natural or absent)")
    if bias_conflicting_ratio is not None:
        from .config import check_value

        check_value("bias-conflicting ratio", bias_conflicting_ratio, float, lo=0, hi=1)
    check_data_options(name, options)
    rho = DEFAULT_RHO[name] if bias_conflicting_ratio is None else bias_conflicting_ratio
    fn = DATASETS[name]
    params = inspect.signature(fn).parameters
    if "data_root" in params:
        options["data_root"] = data_root
    folder = cache_dir() if name in CACHED else None
    if folder is not None:
        path = folder / _cache_key(name, seed, rho, options)
        if path.exists():
            cached = _load_cached(path)
            if cached is not None:
                return cached
        bundle = fn(seed=seed, rho_train=rho, **options)
        _save_cached(path, bundle)
        return bundle
    return fn(seed=seed, rho_train=rho, **options)


def _exact_bc_mask(n: int, rho: float, gen: np.random.Generator) -> np.ndarray:
    """Exactly round(rho * n) bias-conflicting samples, at random positions."""
    mask = np.zeros(n, dtype=bool)
    mask[gen.permutation(n)[: int(round(rho * n))]] = True
    return mask


def _labels(n: int, rho: float, n_classes: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Balanced class labels y; b = y on bias-aligned samples, another class uniformly on
    bias-conflicting ones (for binary tasks: the other class)."""
    y = gen.permutation(np.arange(n) % n_classes)
    bc = _exact_bc_mask(n, rho, gen)
    shift = gen.integers(1, n_classes, size=n)
    b = np.where(bc, (y + shift) % n_classes, y)
    return y.astype(np.int64), b.astype(np.int64)


def _bits_with_parity(parity: np.ndarray, k: int, gen: np.random.Generator) -> np.ndarray:
    """Uniform random {0,1}^k rows conditioned on their parity (sum mod 2) being `parity`."""
    bits = gen.integers(0, 2, size=(len(parity), k))
    wrong = bits.sum(1) % 2 != parity
    bits[wrong, 0] ^= 1  # flipping one bit fixes parity and keeps the row uniform on its coset
    return bits


# ------------------------------------------------------------------------------- parity
def _check_parity(o: dict) -> None:
    if o["spurious_bits"] >= o["core_bits"]:
        raise ConfigError(f"parity needs spurious_bits < core_bits (got S={o['spurious_bits']}, C={o['core_bits']})")
    d = o["core_bits"] + o["spurious_bits"] + o["noise_bits"]
    n = (o["n_train"] + o["n_test"]) * d
    if n > 2**30:
        raise ConfigError(f"parity with {o['n_train']} + {o['n_test']} samples of {d} bits is too large "
                          f"({n * 4 / 1e9:.1f} GB of float32 inputs; the limit is {2**30 * 4 / 1e9:.1f} GB)")


@register_dataset("parity", rho_train=0.1, check=_check_parity, options={
    "rho_test": RHO_TEST,
    "n_train": option(int, lo=1, hi=MAX_SAMPLES),
    "n_test": option(int, lo=1, hi=MAX_SAMPLES),
    "core_bits": option(int, lo=1, hi=64, help="C: y is their parity"),
    "spurious_bits": option(int, lo=1, hi=63, help="S < C: b is their parity"),
    "noise_bits": option(int, lo=0, hi=2**16, help="N uniform bits"),
})
def parity(
    *,
    seed: int = 0,
    rho_train: float = 0.1,
    rho_test: float = 0.5,
    n_train: int = 10000,
    n_test: int = 10000,
    core_bits: int = 4,
    spurious_bits: int = 1,
    noise_bits: int = 30,
) -> DataBundle:
    """Boolean parity task (Qiu et al. 2024 style, as used by Barsbey et al.).

    Inputs are ±1 vectors ``[core | spurious | noise]``; y is the parity of the C core bits,
    b the parity of the S spurious bits (S < C makes the shortcut simpler), noise bits are
    uniform. ρ is exact: round(ρ·n) samples have b ≠ y. The paper does not give C, S, N; the
    defaults are our calibration (see docs/replication.md).
    """
    if spurious_bits >= core_bits:
        raise ConfigError(f"parity needs spurious_bits < core_bits (got S={spurious_bits}, C={core_bits})")
    for nm, v in (("core_bits", core_bits), ("spurious_bits", spurious_bits), ("n_train", n_train), ("n_test", n_test)):
        if v < 1:
            raise ConfigError(f"parity option {nm} must be >= 1, got {v}")
    if noise_bits < 0:
        raise ConfigError(f"parity option noise_bits must be >= 0, got {noise_bits}")
    gen = np.random.default_rng([seed, 7001])

    def split(n: int, rho: float) -> Split:
        y, b = _labels(n, rho, 2, gen)
        bits = np.concatenate(
            [_bits_with_parity(y, core_bits, gen), _bits_with_parity(b, spurious_bits, gen),
             gen.integers(0, 2, size=(n, noise_bits))], axis=1)
        x = torch.from_numpy((2 * bits - 1).astype(np.float32))
        return Split(x, torch.from_numpy(y), torch.from_numpy(b), torch.arange(n))

    d = core_bits + spurious_bits + noise_bits
    regions = {name: np.zeros(d, dtype=bool) for name in ("core", "spurious", "noise")}
    regions["core"][:core_bits] = True
    regions["spurious"][core_bits:core_bits + spurious_bits] = True
    regions["noise"][core_bits + spurious_bits:] = True
    return DataBundle("parity", split(n_train, rho_train), split(n_test, rho_test), 2, 2, (d,), regions,
                      f"parity C={core_bits} S={spurious_bits} N={noise_bits}")


# ------------------------------------------------------------------------------- moon-star
def _render_shapes(y: np.ndarray, b: np.ndarray, size: int, noise: float, gen: np.random.Generator) -> np.ndarray:
    """Render a moon (y=0) or a five-pointed star (y=1) in the quadrant picked by b
    (b=0 top-left, b=1 bottom-right), with random scale, rotation, position jitter and noise."""
    n = len(y)
    half = size / 2
    cy = np.where(b == 0, half / 2, 3 * half / 2) + gen.uniform(-1.5, 1.5, n)
    cx = np.where(b == 0, half / 2, 3 * half / 2) + gen.uniform(-1.5, 1.5, n)
    r = half * gen.uniform(0.32, 0.42, n)
    rot = gen.uniform(0, 2 * math.pi, n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    rho = np.sqrt(dx**2 + dy**2) / r[:, None, None]
    theta = np.arctan2(dy, dx) - rot[:, None, None]
    # star: radius oscillates between 0.45 and 1 with five points
    star_r = 0.45 + 0.55 * np.abs(np.cos(2.5 * theta)) ** 3
    star = rho <= star_r
    # moon: unit disk minus a disk shifted along the rotation direction
    sx = dx / r[:, None, None] - 0.55 * np.cos(rot)[:, None, None]
    sy = dy / r[:, None, None] - 0.55 * np.sin(rot)[:, None, None]
    moon = (rho <= 1.0) & (sx**2 + sy**2 > 0.75**2)
    img = np.where((y == 1)[:, None, None], star, moon).astype(np.float32)
    img = np.clip(img + noise * gen.standard_normal(img.shape).astype(np.float32), 0, 1)
    return (img * 255).round().astype(np.uint8)[:, None]  # (n, 1, size, size)


def _check_moon_star(o: dict) -> None:
    for split in ("n_train", "n_test"):
        n = o[split] * o["size"] ** 2
        if n > 2**28:
            raise ConfigError(f"moon_star with {split}={o[split]} images of {o['size']}x{o['size']} is too large to "
                              f"render ({n:,} pixels per split; the limit is {2**28:,})")


@register_dataset("moon_star", rho_train=0.1, check=_check_moon_star, options={
    "rho_test": RHO_TEST,
    "n_train": option(int, lo=1, hi=MAX_SAMPLES),
    "n_test": option(int, lo=1, hi=MAX_SAMPLES),
    "size": option(int, lo=8, hi=MAX_IMAGE_SIZE, help="image side in pixels"),
    "noise": option(float, lo=0, hi=100, help="std of the Gaussian pixel noise"),
})
def moon_star(
    *,
    seed: int = 0,
    rho_train: float = 0.1,
    rho_test: float = 0.5,
    n_train: int = 10000,
    n_test: int = 2000,
    size: int = 28,
    noise: float = 0.15,
) -> DataBundle:
    """Moon vs star (Kirichenko et al. style): the shape is the class, the quadrant it sits in
    is the spurious feature (ρ_train = 0.1, ρ_test = 0.5)."""
    if size < 8:
        raise ConfigError(f"moon_star option size must be >= 8, got {size}")
    gen = np.random.default_rng([seed, 7002])

    def split(n: int, rho: float) -> Split:
        y, b = _labels(n, rho, 2, gen)
        x = torch.from_numpy(_render_shapes(y, b, size, noise, gen))
        return Split(x, torch.from_numpy(y), torch.from_numpy(b), torch.arange(n))

    return DataBundle("moon_star", split(n_train, rho_train), split(n_test, rho_test), 2, 2, (1, size, size),
                      {}, f"moon-star {size}x{size}")


def probe_subset(bundle: DataBundle, size: int, seed: int) -> np.ndarray:
    """Positions in the test split of a group-balanced subset of at most `size` samples
    (equal count per (y, b) group where the groups allow), sorted."""
    groups = bundle.group(bundle.test).numpy()
    gen = np.random.default_rng([seed, 7100])
    present = np.unique(groups)
    per = max(1, size // len(present))
    picks = []
    for g in present:
        pos = np.flatnonzero(groups == g)
        picks.append(gen.permutation(pos)[:per])
    sel = np.concatenate(picks)
    if len(sel) < size:  # small groups: fill up from the rest at random
        rest = np.setdiff1d(np.arange(len(groups)), sel)
        sel = np.concatenate([sel, gen.permutation(rest)[: size - len(sel)]])
    return np.sort(sel[:size])


from . import images  # noqa: E402,F401  (registers the MNIST-style recipes)
from . import vision  # noqa: E402,F401  (registers the CIFAR/CelebA/Waterbirds/ImageNet loaders)
