"""Datasets: the registry's one place of import, building by name, and the on-disk cache of
built splits. Every dataset yields whole splits as tensors (airbench-style: no per-sample
``__getitem__``; the training loop batches by index), with a class label y, a bias label b, the
bias-conflicting flag, the (y, b) group, and optional input-region masks (core / spurious /
noise) for attribution shares.

The recipes live in the modules of `RECIPE_MODULES`, each importing only from `train/recipes.py`
(the entry, its decorator and the shared helpers); importing this module imports them all, which
fills `DATASETS`. None of them imports torch at the top: the registry loads without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, DataError
from .recipes import DATASETS, RESERVED, DataBundle, DatasetEntry, Split

RECIPE_MODULES = ("synthetic", "images", "vision")  # every module that registers datasets
for _module in RECIPE_MODULES:
    importlib.import_module(f".{_module}", __package__)

CACHE_VERSION = 4  # bump when a cached recipe's output (or the cache's layout) changes (4: the val split)

if TYPE_CHECKING:
    import torch


def as_model_input(x: torch.Tensor) -> torch.Tensor:
    """Raw stored inputs -> float model inputs (uint8 images are scaled to [0, 1])."""
    import torch

    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def entry(name: str) -> DatasetEntry:
    """The registry's entry of dataset `name`, or of the plugin dataset at import path `name`
    (``package.module:function``, train/plugins.py); ConfigError naming the valid ones if unknown."""
    from .plugins import registered_or_plugin

    return registered_or_plugin("dataset", name, DATASETS)


def check_data_options(name: str, options: dict) -> dict:
    """Raise ConfigError unless `options` are valid data options of dataset `name` (known names,
    types, ranges, and the dataset's own joint rules); nothing is built. Returns the options
    over the builder's defaults."""
    from .checks import check_value

    e = entry(name)
    check_value("data_options", options, dict)
    for k in options:
        if k in RESERVED:
            raise ConfigError(f"{k!r} is not a data option: it is set by the config field {RESERVED[k]} "
                              f"(--{RESERVED[k].replace('_', '-')})")
    unknown = sorted(set(options) - set(e.options))
    if unknown:
        valid = ", ".join(e.options) if e.options else "none"
        raise ConfigError(f"unknown data option(s) {', '.join(unknown)} for {name!r}; valid: {valid}")
    for k, v in options.items():
        check_value(f"{name} option {k}", v, **e.options[k], choice_label=k)
    merged = {**e.defaults, **options}
    if e.check is not None:
        e.check(merged)
    return merged


def cache_dir() -> Path | None:
    """Where built datasets are cached: $LRSCOPE_CACHE (\"off\" disables), else
    $XDG_CACHE_HOME/lrscope/datasets (~/.cache/lrscope/datasets)."""
    env = os.environ.get("LRSCOPE_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("off", "0", "") else Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lrscope" / "datasets"


def _file_stamp(path) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _cache_key(name: str, seed: int, rho, options: dict, files=(), source: str | None = None,
               val_fraction: float = 0.0) -> str:
    """The cache folder's name: the recipe, seed, ratio and options, the data root with its mtime
    (files added or removed under it: rebuild), the mtime and size of `files` (the entry's
    `stamp`: a metadata table edited in place leaves its folder's mtime alone), and a plugin
    recipe's source hash (an edited recipe rebuilds)."""
    opts = dict(options)
    root = opts.pop("data_root", None)
    stamp = None
    if root is not None:
        root = str(Path(root).resolve())
        stamp = _file_stamp(root)
        stamp = None if stamp is None else stamp[0]
    files = [[str(f), _file_stamp(f)] for f in files]
    key = [CACHE_VERSION, name, seed, rho, opts, root, stamp] + ([files] if files else []) \
        + ([source] if source is not None else []) + ([val_fraction] if val_fraction else [])
    blob = json.dumps(key, sort_keys=True, default=str)
    return f"{name.replace(':', '.')}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"


SPLIT_KEYS = ("x", "y", "b", "index")


def _save_cached(path: Path, b: DataBundle) -> None:
    """Write a built dataset as a folder of `.npy` files (one per array, no pickle) plus meta.json,
    made under a temporary name and renamed into place, so a reader sees all of it or nothing."""
    import shutil

    arrays = {f"{sp}_{k}": getattr(getattr(b, sp), k).numpy() for sp in b.splits for k in SPLIT_KEYS}
    arrays.update({f"region_{k}": v for k, v in b.regions.items()})
    meta = {"name": b.name, "num_classes": b.num_classes, "num_bias": b.num_bias,
            "input_shape": list(b.input_shape), "description": b.description, "regions": list(b.regions),
            "has_bias": bool(b.has_bias), "splits": list(b.splits)}
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", np.ascontiguousarray(v), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.rename(tmp, path)  # another process may have won the race: keep its copy
    except OSError:  # a read-only or full cache is not an error: the next run rebuilds
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def map_npy(file: str | os.PathLike) -> torch.Tensor:
    """A tensor backed by a memory-mapped `.npy` file (copy-on-write: pages are read from disk when
    touched, writes stay private), marked as such (`is_mapped`)."""
    import torch

    t = torch.from_numpy(np.load(file, mmap_mode="c", allow_pickle=False))
    t.lrscope_mapped = True
    return t


def is_mapped(t: torch.Tensor) -> bool:
    """Whether `t` reads a memory-mapped file (`map_npy`) rather than memory of its own."""
    return bool(getattr(t, "lrscope_mapped", False))


def _load_cached(path: Path) -> DataBundle | None:
    """The cached dataset at `path`; inputs memory-mapped (nothing is read until used: a run
    placed on the device or in host memory copies them once, an `mmap` run reads the batches
    it gathers), labels read."""
    import torch

    try:
        meta = json.loads((path / "meta.json").read_text())
        sp = {s: Split(map_npy(path / f"{s}_x.npy"),
                       *(torch.from_numpy(np.load(path / f"{s}_{k}.npy", allow_pickle=False))
                         for k in SPLIT_KEYS[1:]))
              for s in meta.get("splits", ("train", "test"))}
        regions = {k: np.load(path / f"region_{k}.npy", allow_pickle=False) for k in meta["regions"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return DataBundle(meta["name"], sp["train"], sp["test"], meta["num_classes"], meta["num_bias"],
                      tuple(meta["input_shape"]), regions, meta["description"],
                      has_bias=bool(meta.get("has_bias", True)),  # absent: a cache of before the field (bias)
                      val=sp.get("val"))


VAL_SEED = 7300  # the held-out validation split's stream: numpy default_rng([data_seed, VAL_SEED])


def hold_out_validation(bundle: DataBundle, fraction: float, seed: int) -> DataBundle:
    """`bundle` with a validation split: the dataset's own where it ships one (unchanged, whatever
    `fraction`), else `fraction` of the training pool held out: round(fraction * n) of the
    bias-aligned and round(fraction * n) of the bias-conflicting samples (so the held-out split has
    the training split's bias-conflicting proportion up to one sample, even where the conflicting
    samples are spread thinly over many (y, b) groups), each shared out over the (y, b) groups in
    proportion to their sizes by largest remainder (class balance kept; at least one sample of a
    group stays in training). The draw is numpy's default_rng([seed, VAL_SEED]) (the run's data
    seed): every run of a sweep holds out the same samples. Both splits keep the pool's order and
    their source `index`. fraction 0, or a pool too small to give one sample: no validation split."""
    import dataclasses

    if bundle.val is not None or fraction <= 0:
        return bundle
    groups = bundle.group(bundle.train).numpy()
    conflicting = bundle.train.bias_conflicting.numpy()
    gen = np.random.default_rng([seed, VAL_SEED])
    picks = []
    for stratum in (False, True):
        gs, sizes = np.unique(groups[conflicting == stratum], return_counts=True)
        if not len(gs):
            continue
        target = int(np.floor(fraction * sizes.sum() + 0.5))
        quota = sizes * target / sizes.sum()
        take_n = np.floor(quota).astype(np.int64)
        left = target - take_n.sum()
        for i in np.argsort(-(quota - take_n), kind="stable")[:left]:  # largest remainders first
            take_n[i] += 1
        for g, k in zip(gs, np.minimum(take_n, sizes - 1)):
            pos = np.flatnonzero(groups == g)
            picks.append(gen.permutation(pos)[:k])
    val_pos = np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)
    if len(val_pos) == 0:
        return bundle
    keep = np.ones(len(groups), dtype=bool)
    keep[val_pos] = False
    train_pos = np.flatnonzero(keep)
    tr = bundle.train

    def take(pos: np.ndarray) -> Split:
        import torch

        idx = torch.from_numpy(pos)
        return Split(tr.x[idx], tr.y[idx], tr.b[idx], tr.index[idx])

    return dataclasses.replace(bundle, train=take(train_pos), val=take(val_pos))


def build_dataset(name: str, *, seed: int = 0, bias_conflicting_ratio: float | None = None,
                  data_root: str | None = None, val_fraction: float = 0.0, **options) -> DataBundle:
    """Build a dataset by name. ``options`` are the dataset's own knobs (sizes, bits, base set, ...);
    ``data_root`` is passed to the datasets that read files. ``val_fraction``: the share of the
    training pool held out as the validation split when the dataset ships none
    (`hold_out_validation`; RunConfig.val_fraction)."""
    from .checks import check_value

    check_value("val_fraction", val_fraction, float, lo=0, hi=0.5)
    e = entry(name)
    if e.rho_train is None and bias_conflicting_ratio is not None:
        raise ConfigError(f"{name!r} has no bias-conflicting ratio to set (its bias is natural or absent)")
    if bias_conflicting_ratio is not None:
        from .checks import check_value

        check_value("bias-conflicting ratio", bias_conflicting_ratio, float, lo=0, hi=1)
    check_data_options(name, options)
    rho = e.rho_train if bias_conflicting_ratio is None else bias_conflicting_ratio
    if e.reads_files:
        options["data_root"] = data_root
    folder = cache_dir() if e.cached else None
    from .plugins import is_import_path, source_sha256

    plugin = is_import_path(name)
    build = _checked_build(e) if plugin else e.build
    if folder is not None:
        files = e.stamp({**e.defaults, **options}) if e.stamp is not None else ()
        path = folder / _cache_key(name, seed, rho, options, files, source_sha256(e.build) if plugin else None,
                                   val_fraction)
        if (path / "meta.json").exists():
            cached = _load_cached(path)
            if cached is not None:
                return cached
        # held out before caching: the cache maps the training split as it is trained on
        bundle = hold_out_validation(build(seed=seed, rho_train=rho, **options), val_fraction, seed)
        _save_cached(path, bundle)
        return bundle
    bundle = build(seed=seed, rho_train=rho, **options)
    if e.draws and val_fraction > 0 and bundle.val is None:
        return dataclasses.replace(bundle, val=draw_validation(build, bundle, val_fraction, seed, rho, options))
    return hold_out_validation(bundle, val_fraction, seed)


def draw_validation(build, bundle: DataBundle, fraction: float, seed: int, rho, options: dict) -> Split:
    """The validation split of a dataset that draws its samples (parity, moon-star): round(fraction x
    n_train) further samples of the training distribution (its bias-conflicting ratio exactly, as the
    builder draws it), from the stream of seed + 2**32 (no data seed reaches it, MAX_SEED = 2**32 - 1),
    so the training split is the same n_train samples it is without a validation split."""
    n_val = max(1, int(round(fraction * len(bundle.train))))
    extra = build(seed=seed + 2**32, rho_train=rho, **{**options, "n_train": n_val, "n_test": 1})
    return extra.train


def _checked_build(e: DatasetEntry):
    """A plugin dataset's builder, whose result is checked: a DataBundle of consistent splits
    (PluginError in one line otherwise)."""
    from ..errors import PluginError

    def build(**kw) -> DataBundle:
        try:
            b = e.build(**kw)
        except (ConfigError, DataError):
            raise
        except Exception as err:  # noqa: BLE001 - the plugin's own failure, in one line
            text = str(err).strip().splitlines()
            raise PluginError(f"plugin dataset {e.name}: building it failed ({type(err).__name__}"
                              f"{': ' + text[0] if text else ''})") from None
        if not isinstance(b, DataBundle):
            raise PluginError(f"plugin dataset {e.name}: returned {type(b).__name__}, expected a "
                              f"lrscope.train.recipes.DataBundle")
        for split in b.splits:
            sp = getattr(b, split)
            n = len(sp.y)
            if n == 0 or any(len(getattr(sp, k)) != n for k in ("x", "b", "index")):
                raise PluginError(f"plugin dataset {e.name}: its {split} split is empty or its x, y, b, index "
                                  f"lengths differ")
            if tuple(sp.x.shape[1:]) != tuple(b.input_shape):
                raise PluginError(f"plugin dataset {e.name}: {split} inputs have shape {tuple(sp.x.shape[1:])}, "
                                  f"input_shape says {tuple(b.input_shape)}")
            if int(sp.y.max()) >= b.num_classes or int(sp.y.min()) < 0:
                raise PluginError(f"plugin dataset {e.name}: {split} labels outside 0..{b.num_classes - 1}")
        return b

    return build


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
