"""Reading run stores as lazy, labelled xarray Datasets."""

from __future__ import annotations

import glob as _glob
import json
import os
import stat
from pathlib import Path
from typing import Any, Iterable

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ..errors import StoreError
from . import schema as S
from .checked import (
    MAX_ROWS,
    CheckedStore,
    check_metadata,
    check_probe_metadata,
    check_shape,
    guessed_chunks,
    is_dir_not_link,
)

# Config fields that become `run` coordinates in a sweep even when they do not vary.
ALWAYS_COORDS = ("dataset", "model", "lr", "seed")


def open_store(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """Open a run store's root group after checking it is one this version can read. Reads go
    through a `CheckedStore`: symlinks inside the store are refused and, for schema 2 stores,
    missing chunks and chunks failing their checksum are errors naming the array."""
    store, root, attrs = _open_root(path, mode)
    store.check_array_metadata = _metadata_checker(store, path, attrs)
    if attrs[S.ATTR_SCHEMA] >= S.CHECKSUM_SCHEMA:
        _make_strict(store, root, attrs, path)
    return root


def run_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """A run store's root attributes, checked as `open_store` checks them (`check_attrs`), read
    through a `CheckedStore` without opening any array: what listing runs needs (the explorer's
    sweeps, `group_sweeps`)."""
    return _open_root(path, "r")[2]


def _open_root(path, mode: str) -> tuple[CheckedStore, zarr.Group, dict[str, Any]]:
    p = as_path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise StoreError(f"{_shown(str(path), 200)}: no such file or directory") from None
    except OSError as e:  # a name too long, a component that is a file, no permission
        raise StoreError(f"{_shown(str(path), 200)}: {e.strerror or type(e).__name__}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{_shown(str(path), 200)}: not an lrscope run store (not a folder)")
    store = CheckedStore(p, read_only=mode == "r")
    try:
        root = zarr.open_group(store=store, mode=mode, zarr_format=3)
        attrs = root.attrs.asdict()
    except StoreError:
        raise
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError, zarr.errors.GroupNotFoundError) as e:
        raise StoreError(f"{path}: not an lrscope run store ({type(e).__name__})") from None
    except Exception as e:  # corrupted metadata of any other kind
        raise StoreError(f"{path}: not a readable run store ({type(e).__name__}: {e})") from None
    check_attrs(attrs, path)
    return store, root, attrs


def as_path(path: Any, what: str = "path") -> Path:
    """A path argument of the public API as a Path, or the one-line StoreError (None, a number,
    bytes, a name with a NUL byte)."""
    if not isinstance(path, (str, os.PathLike)):
        raise StoreError(f"expected a {what} (str or os.PathLike) to a run store or a folder of them, "
                         f"got {type(path).__name__} {_shown(path, 40)}")
    if isinstance(path, str) and not path.strip():
        raise StoreError(f"expected a {what} to a run store or a folder of them, got an empty string")
    try:
        p = Path(path)
    except TypeError:  # an os.PathLike whose __fspath__ returns bytes or nothing
        raise StoreError(f"expected a {what} (str or os.PathLike), got {_shown(path, 40)}") from None
    if "\x00" in str(p):
        raise StoreError(f"{_shown(str(p), 60)}: a path cannot contain a NUL character")
    return p


def _make_strict(store: CheckedStore, root: zarr.Group, attrs: dict, path) -> None:
    """Missing chunks become errors, except the logits rows that were never evaluated (light
    snapshots), which the store lists in snapshots/{test,train}_evaluated."""
    n_snap = attrs[S.ATTR_COMMITTED]["snapshot"]
    flags = {}
    store.strict = True  # the flags themselves are checked too (no chunk may be missing yet)
    try:
        for split, arr in S.EVALUATED.items():
            if split == S.A_VAL_LOGITS and split not in root[S.G_SNAP]:
                continue  # no validation split (an older store, or none held out): no flags either
            a = check_array(root[f"{S.G_SNAP}/{arr}"])
            check_node(path, root, a.path, a, attrs)
            flags[f"{S.G_SNAP}/{split}"] = np.asarray(a[:n_snap], dtype=bool) if n_snap else np.zeros(0, bool)
    except KeyError:
        if attrs[S.ATTR_COMMITTED]["checkpoint"] > 0:
            raise StoreError(f"{path}: run store is missing its snapshot evaluation flags (truncated or corrupted?)"
                             ) from None

    def allow_missing(array: str, coords: tuple[int, ...]) -> bool:
        f = flags.get(array)
        return f is not None and bool(coords) and (coords[0] >= len(f) or not f[coords[0]])

    store.allow_missing = allow_missing


def lock_held(path: str | os.PathLike) -> bool:
    """Whether a live process holds the run's lock (trains it now). Creates nothing."""
    import fcntl

    try:
        fd = os.open(str(path) + ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bad_config_values(cfg: dict) -> str:
    """The config fields every reader relies on, type- and range-checked (the store cannot import
    train's RunConfig; lrtrain validates the whole config when it resumes)."""
    import math

    lr = cfg.get("lr")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        return f"lr={lr!r}"
    if "seed" not in cfg:  # every lrscope config has one; summaries show it
        return "seed missing"
    for key, lo in (("seed", 0), ("data_seed", 0), ("batch_size", 1), ("max_steps", 1), ("probe_size", 1)):
        if key in cfg and not (_is_int(cfg[key]) and cfg[key] >= lo):
            return f"{key}={cfg[key]!r}"
    for key in ("data_options", "model_options"):
        if key in cfg and not isinstance(cfg[key], dict):
            return f"{key}={cfg[key]!r}"
    return ""


def _shown(value: Any, limit: int = 60) -> str:
    """A store's value in an error message: its repr (control characters escaped), cut short."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_attrs(attrs: dict[str, Any], path: Any) -> None:
    """The root attributes of a run store, type- and range-checked before anything uses them."""
    if attrs.get(S.ATTR_KIND) != "run":
        raise StoreError(f"{path}: not an lrscope run store (no '{S.ATTR_KIND}' marker)")
    v = attrs.get(S.ATTR_SCHEMA)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise StoreError(f"{path}: run store without a valid schema_version")
    if v > S.SCHEMA_VERSION:
        raise StoreError(
            f"{path}: store schema_version {v} is newer than this lrscope reads ({S.SCHEMA_VERSION}); "
            "upgrade lrscope")
    for key in (S.ATTR_CONFIG, S.ATTR_COMMITTED, S.ATTR_STATUS):
        if key not in attrs:
            raise StoreError(f"{path}: run store is missing its '{key}' attribute")
    cfg = attrs[S.ATTR_CONFIG]
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k), str) for k in ("dataset", "model")):
        raise StoreError(f"{path}: the store's config attribute is not a run config (corrupted store)")
    for key in ("dataset", "model"):
        if not S.NAME_RE.match(cfg[key]):
            raise StoreError(f"{path}: the store's {key} name {_shown(cfg[key])} is not one lrscope writes "
                             "(corrupted or hostile store)")
    run_id = attrs.get(S.ATTR_RUN_ID)
    if run_id is not None and not (isinstance(run_id, str) and S.RUN_ID_RE.match(run_id) and ".." not in run_id):
        raise StoreError(f"{path}: the store's run_id {_shown(run_id)} is not one lrscope writes (letters, digits "
                         "and . _ = + -; corrupted or hostile store)")
    bad = _bad_config_values(cfg)
    if bad:
        raise StoreError(f"{path}: the store's config has impossible values ({bad}; corrupted store)")
    status = attrs[S.ATTR_STATUS]
    if status not in S.STATUSES:
        raise StoreError(f"{path}: unknown run status {_shown(status)} (valid: {', '.join(S.STATUSES)}; "
                         "corrupted store)")
    com = attrs[S.ATTR_COMMITTED]
    if not isinstance(com, dict) or set(com) != set(S.APPEND_DIMS.values()) or not all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_ROWS for x in com.values()):
        raise StoreError(f"{path}: the store's committed lengths are not valid ({com!r}; corrupted store)")
    # snapshots and checkpoints sit at distinct iterations 0..iteration
    for key in ("snapshot", "checkpoint"):
        if com[key] > com["iteration"] + 1:
            raise StoreError(f"{path}: {com[key]} {key}s committed for {com['iteration']} iterations "
                             "(corrupted store)")
    max_steps = cfg.get("max_steps")
    if isinstance(max_steps, int) and com["iteration"] > max_steps:
        raise StoreError(f"{path}: {com['iteration']} iterations committed, beyond the run's max_steps "
                         f"{max_steps} (corrupted store)")
    policy = attrs.get(S.ATTR_LOG_LOGITS, S.LOG_FULL)
    if policy not in S.LOG_POLICIES or (policy == S.LOG_SUMMARY and v < S.SUMMARY_SCHEMA):
        raise StoreError(f"{path}: the store's log_logits attribute {policy!r} is not a minibatch-record policy of "
                         f"its schema {v} (valid: {', '.join(S.LOG_POLICIES)}; corrupted store)")
    if S.ATTR_HAS_BIAS in attrs and not isinstance(attrs[S.ATTR_HAS_BIAS], bool):
        raise StoreError(f"{path}: the store's {S.ATTR_HAS_BIAS} attribute {_shown(attrs[S.ATTR_HAS_BIAS])} is not "
                         "true or false (corrupted store)")
    for key in (S.ATTR_MODEL_INFO, S.ATTR_TIMINGS):
        if key in attrs and not isinstance(attrs[key], dict):
            raise StoreError(f"{path}: the store's {key} attribute is not a mapping (corrupted store)")


def check_array(arr: zarr.Array, *, strings: bool = False) -> zarr.Array:
    """Refuse anything but plain numeric/bool arrays with non-executable codecs: a store is data,
    never code (object, string and void dtypes and pickle codecs can carry pickled objects).
    `strings`: also accept text (fixed-width, or variable-length through the ``vlen-utf8`` codec
    only), which probe results use for labels such as attribution regions."""
    kind = np.dtype(arr.dtype).kind if not hasattr(arr.dtype, "to_native_dtype") else \
        np.dtype(arr.dtype.to_native_dtype()).kind
    names = [str(c.to_dict().get("name", "")) if hasattr(c, "to_dict") else type(c).__name__
             for c in (getattr(arr.metadata, "codecs", ()) or ())]
    for name in names:
        if "pickle" in name.lower() or ("vlen" in name.lower() and not (strings and name == "vlen-utf8")):
            raise StoreError(f"{arr.path}: codec {name!r} refused (no pickle in stores)")
    if kind not in "biuf" and not (strings and kind in "UOT"):
        raise StoreError(f"{arr.path}: dtype {arr.dtype} refused (only numeric arrays; no pickle in stores)")
    if kind == "O" and "vlen-utf8" not in names:
        raise StoreError(f"{arr.path}: object dtype without the vlen-utf8 codec refused (no pickle in stores)")
    return arr


def expected_chunks(shape: tuple[int, ...], rows: int | None, itemsize: int) -> tuple[int, ...]:
    """The chunk shape the writer gives an array of `shape` (store/writer.py): `rows` along the
    appendable first dim and the per-sample dims split to stay under MAX_CHUNK_ELEMS; an array
    written whole is one chunk (Zarr's own chunks when it is empty)."""
    from .writer import chunk_rows

    if rows is not None:
        return chunk_rows(tuple(shape[1:]), rows)
    return tuple(shape) if all(shape) else guessed_chunks(tuple(shape), itemsize)


def check_node(path, root: zarr.Group, name: str, arr: zarr.Array, attrs: dict, rows: int | None = None) -> bool:
    """Check a run array's metadata against the writer's declaration (schema.array_spec) and bound
    its size (`rows`: committed length along its first dim) before any chunk of it is read; its
    checked metadata then bounds and checksums its chunks (CheckedStore.register). False for an
    array lrscope does not write there (readers ignore it)."""
    if S.array_spec(name, arr.ndim, S.log_policy(attrs)) is None:
        return False
    check_shape(path, name, arr.shape, arr.chunks, rows)
    _check_declared(path, name, arr.metadata, attrs)
    if isinstance(root.store, CheckedStore):
        root.store.register(name, arr.metadata)
    return True


def _check_declared(path, name: str, md, attrs: dict) -> bool:
    """`check_metadata` for a run array against schema.array_spec (False: not declared)."""
    spec = S.array_spec(name, len(md.shape), S.log_policy(attrs))
    if spec is None:
        return False
    dtypes, fill, dims, per_chunk = spec
    try:
        itemsize = np.dtype(md.data_type.to_native_dtype()).itemsize
    except Exception:
        itemsize = 1
    crc = True if attrs[S.ATTR_SCHEMA] >= S.CHECKSUM_SCHEMA else None
    check_metadata(path, name, md, dtypes=dtypes, fill=fill, dims=dims,
                   chunks=expected_chunks(tuple(md.shape), per_chunk, itemsize), crc=crc)
    return True


def _metadata_checker(store: CheckedStore, path, attrs: dict):
    """The CheckedStore hook that checks every array's metadata as it is read, whoever reads it
    (open_run, load_model, a resume, the explorer): run arrays against schema.array_spec, probe
    results' against check_probe_metadata; others (the optimizer state, arrays lrscope does not
    write) are left to their readers."""
    from .zarr_internals import ArrayV3Metadata

    crc = True if attrs[S.ATTR_SCHEMA] >= S.CHECKSUM_SCHEMA else None

    def check(name: str, meta: dict) -> None:
        parts = name.split("/")
        probe_array = parts[0] == S.G_PROBES and len(parts) == 3
        if not probe_array and S.array_spec(name, len(meta.get("shape") or ()), S.log_policy(attrs)) is None:
            return
        try:
            md = ArrayV3Metadata.from_dict(dict(meta))
        except Exception as e:  # an unknown codec or data type, a malformed field
            raise StoreError(f"{path}: array {name} has metadata lrscope cannot read ({type(e).__name__}: "
                             f"{_shown(str(e), 100)}; edited or foreign store)") from None
        if probe_array:
            check_probe_metadata(path, name, md, crc=crc)
        else:
            _check_declared(path, name, md, attrs)
        store.register(name, md)

    return check


def _lazy(arr: zarr.Array, n: int | None, token: str) -> da.Array:
    """A dask view of the committed rows. The explicit name and meta skip dask's tokenising of
    the array and its probe read (together ~2/3 of opening a store)."""
    check_array(arr)
    dt = np.dtype(arr.dtype)
    # a shorter array keeps its own length: the caller reports it as truncated
    src = _Prefix(arr, n) if n is not None and n < arr.shape[0] else arr  # cheaper than slicing in dask
    # from_array, not from_zarr: from_zarr drops `meta` and so reads the array to make one
    return da.from_array(src, chunks=arr.chunks, name=f"lrscope-{token}-{arr.path}-{n}",
                         meta=np.empty((0,) * arr.ndim, dtype=dt))


class _Prefix:
    """The first `n` rows of a Zarr array, as dask's from_array sees an array (shape, dtype,
    indexing): the committed rows of an array that may hold rows written after the last commit."""

    def __init__(self, arr: zarr.Array, n: int):
        self.arr, self.shape, self.dtype, self.ndim = arr, (n,) + tuple(arr.shape[1:]), arr.dtype, arr.ndim

    def __getitem__(self, key):
        return self.arr[key]


def _read_many(arrays: list[zarr.Array]) -> list[np.ndarray]:
    """Read several small arrays whole, concurrently (one trip through Zarr's event loop)."""
    import asyncio

    from .zarr_internals import sync

    async def all_():
        return await asyncio.gather(*(a.async_array.getitem(Ellipsis) for a in arrays))

    return [np.asarray(v) for v in sync(all_())] if arrays else []


def _dims(arr: zarr.Array) -> tuple[str, ...]:
    dims = arr.metadata.dimension_names
    if dims is None or len(dims) != arr.ndim:
        raise StoreError(f"{arr.path}: array without dimension names")
    return tuple(dims)


def open_run(path: str | os.PathLike, *, probes: bool = True) -> xr.Dataset:
    """Open one run store as a lazy xarray Dataset.

    Dims: ``iteration`` (log rows), ``snapshot``, ``checkpoint``, ``train_sample``,
    ``test_sample``, ``probe_sample``, ``class``, ``neuron``. Labels are coordinates
    (``test_y``, ``test_b``, ``test_group``, ...), the run config is in ``attrs["config"]``.
    Only committed rows are visible, so a run still training reads as a consistent prefix.
    With ``probes=True`` the results written by ``lrprobe compute`` are merged in.

    Examples
    --------
    >>> ds = lrscope.open_run("runs/parity-fcn-lr0.1-s0.zarr")
    >>> ds.loss.plot()
    """
    ds, _ = _open_run(path, probes=probes)
    return ds


LAYOUT_KEYS = ("dataset", "model", "data_seed", "data_options", "bias_conflicting_ratio", "widths",
               "model_options", "batch_size", "probe_size")


def _open_run(path, *, probes: bool = True, layouts: list[dict] = (), describe: bool = True
              ) -> tuple[xr.Dataset, dict]:
    """Open a run; when one of `layouts` comes from a run with the same data and model config,
    the array metadata and the labels are taken from it instead of being read again: only the
    root attributes and the snapshot/checkpoint indices are read. Returns (dataset, layout)."""
    root = open_store(path)
    attrs = root.attrs.asdict()
    com = attrs[S.ATTR_COMMITTED]
    if com["checkpoint"] == 0 and attrs[S.ATTR_STATUS] == S.STATUS_RUNNING and lock_held(path):
        raise StoreError(f"{path}: being created by a running lrtrain (nothing committed yet); try again in a moment")
    token = f"{Path(path).resolve()}-{json.dumps(com, sort_keys=True)}"
    variables: dict[str, xr.Variable] = {}
    coords: dict[str, Any] = {}
    n_it, n_snap, n_ck = com["iteration"], com["snapshot"], com["checkpoint"]
    cfg = attrs[S.ATTR_CONFIG]
    for layout in layouts:
        if all(layout["config"].get(k) == cfg.get(k) for k in LAYOUT_KEYS) and \
                layout["log_logits"] == S.log_policy(attrs):
            return _open_with_layout(path, root, attrs, layout, token, probes, describe), layout
    try:
        # one concurrent traversal of the whole hierarchy's metadata
        nodes = {name: node for name, node in root.members(max_depth=None)
                 if isinstance(node, zarr.Array) and not name.startswith((S.G_PROBES + "/", S.G_CKPT + "/"))}
        # metadata and bounds before anything is allocated, made lazy or read; arrays lrscope does
        # not write (an extra array in log/, say) are ignored: never merged into the Dataset
        for name, arr in list(nodes.items()):
            if S.array_spec(name, arr.ndim, S.log_policy(attrs)) is None:
                check_array(arr)  # ignored, unless it holds what no reader may meet: pickle, objects, text
                del nodes[name]
                continue
            dims = _dims(arr)
            rows = com.get(S.APPEND_DIMS.get(dims[0], ""))
            check_node(path, root, name, arr, attrs, rows)
            if rows is not None and arr.shape[0] < rows:
                raise StoreError(f"{path}: array {name} has {arr.shape[0]} rows along {dims[0]}, "
                                 f"{rows} committed (truncated or corrupted store)")
        eager = []  # labels and small coordinates: read whole, concurrently
        for name, arr in nodes.items():
            parts = name.split("/")
            if parts[0] == S.G_DATA and len(parts) == 3 and parts[2] != S.A_INPUTS:
                eager.append((f"{parts[1]}_{parts[2]}", arr))
            elif name == f"{S.G_DATA}/regions":
                eager.append(("regions", arr))
        for (cname, arr), values in zip(eager, _read_many([check_array(a) for _, a in eager])):
            if cname == "regions":
                variables["regions"] = xr.Variable(_dims(arr), values)
                coords["region"] = ("region", list(attrs.get(S.ATTR_REGIONS, [])))
            else:
                coords[cname] = (_dims(arr), values)
        for name, arr in nodes.items():
            parts = name.split("/")
            if name == f"{S.G_DATA}/probe/{S.A_INPUTS}":
                variables["probe_inputs"] = xr.Variable(_dims(arr), _lazy(arr, None, token))
            elif parts[0] == S.G_LOG:
                variables[S.READ_AS.get(parts[1], parts[1])] = xr.Variable(_dims(arr), _lazy(arr, n_it, token))
            elif parts[0] == S.G_SNAP and parts[1] != S.A_SNAP_ITER:
                variables[parts[1]] = xr.Variable(_dims(arr), _lazy(arr, n_snap, token))
        coords[S.D_ITER] = (S.D_ITER, np.arange(n_it))
        snap_it, ck_it = _read_many([_index_array(path, root, attrs, S.G_SNAP),
                                     _index_array(path, root, attrs, S.G_CKPT)])
        coords["snapshot_iteration"] = (S.D_SNAP, snap_it[:n_snap])
        coords[S.D_SNAP] = (S.D_SNAP, np.arange(n_snap))
        coords[S.D_CKPT] = (S.D_CKPT, np.arange(n_ck))
        coords["checkpoint_iteration"] = (S.D_CKPT, ck_it[:n_ck])
        required = (*(S.READ_AS.get(n, n) for n in S.LOG_SCALARS), S.A_BATCH_INDEX,
                    *S.log_record_names(S.log_policy(attrs)), S.A_TEST_LOGITS, S.A_PROBE_LOGITS, S.A_TRAIN_LOGITS,
                    S.A_PROBE_FEATURES, "probe_inputs")
        if S.A_VAL_LOGITS in variables:  # a validation split: its labels and flags with it
            required += tuple(f"val_{label}" for label in S.LABELS)
        for need in required + tuple(f"{split}_{label}" for split in S.SPLITS for label in S.LABELS
                                     if split not in S.OPTIONAL_SPLITS):
            if need not in variables and need not in coords:
                raise KeyError(need)
    except KeyError as e:
        raise StoreError(f"{path}: run store is missing {e} (truncated or corrupted?)") from None
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"{path}: corrupted run store ({type(e).__name__}: {e})") from None
    if len(coords["snapshot_iteration"][1]) != n_snap or len(coords["checkpoint_iteration"][1]) != n_ck:
        raise StoreError(f"{path}: snapshot/checkpoint index shorter than committed (truncated or corrupted store)")
    # trimmed arrays must agree with the committed lengths (a truncated array is corruption)
    for name, v in variables.items():
        for dim, key in S.APPEND_DIMS.items():
            if dim in v.dims and v.sizes[dim] != com[key]:
                raise StoreError(f"{path}: array {name} has {v.sizes[dim]} rows along {dim}, "
                                 f"{com[key]} committed (truncated or corrupted store)")
    ds = _finish_dataset(path, root, attrs, variables, coords, probes, describe)
    layout = {"config": cfg, "log_logits": S.log_policy(attrs),
              "nodes": {name: (arr.metadata, _dims(arr)) for name, arr in nodes.items()},
              "coords": {k: v for k, v in coords.items() if k.split("_")[0] in S.SPLITS or k == "region"},
              "regions": variables.get("regions")}
    return ds, layout


def _index_array(path, root: zarr.Group, attrs: dict, group: str) -> zarr.Array:
    """snapshots/iteration or checkpoints/iteration, its metadata checked."""
    name = f"{group}/{S.A_SNAP_ITER if group == S.G_SNAP else S.A_CKPT_ITER}"
    arr = root[name]
    if not isinstance(arr, zarr.Array):
        raise KeyError(name)
    check_node(path, root, name, check_array(arr), attrs)
    return arr


def _open_with_layout(path, root, attrs, layout, token, probes, describe) -> xr.Dataset:
    from .zarr_internals import array_from_metadata

    com = attrs[S.ATTR_COMMITTED]
    n_it, n_snap, n_ck = com["iteration"], com["snapshot"], com["checkpoint"]
    store = root.store  # the run's CheckedStore (strict for schema-2 stores)
    variables: dict[str, xr.Variable] = {}
    coords: dict[str, Any] = dict(layout["coords"])
    if layout["regions"] is not None:
        variables["regions"] = layout["regions"]
    lengths = {S.D_ITER: n_it, S.D_SNAP: n_snap, S.D_CKPT: n_ck}
    try:
        for name, (meta, dims) in layout["nodes"].items():
            parts = name.split("/")
            if not (parts[0] in (S.G_LOG, S.G_SNAP) or name == f"{S.G_DATA}/probe/{S.A_INPUTS}"):
                continue
            if parts[0] == S.G_SNAP and parts[1] == S.A_SNAP_ITER:
                continue
            n = lengths.get(dims[0])
            if n is not None:  # this run's committed length, with the layout's chunks
                check_shape(path, name, meta.shape, meta.chunks, n)
            m = meta.update_shape((n, *meta.shape[1:])) if n is not None else meta
            if isinstance(store, CheckedStore):
                store.register(name, m)  # the layout's checked metadata bound this run's chunks
            arr = array_from_metadata(m, store, name)
            vname = S.READ_AS.get(parts[-1], parts[-1]) if parts[0] == S.G_LOG else \
                parts[-1] if parts[0] != S.G_DATA else "probe_inputs"
            variables[vname] = xr.Variable(dims, _lazy(arr, None, token))
        snap_it, ck_it = _read_many([_index_array(path, root, attrs, S.G_SNAP),
                                     _index_array(path, root, attrs, S.G_CKPT)])
    except KeyError as e:
        raise StoreError(f"{path}: run store is missing {e} (truncated or corrupted?)") from None
    if len(snap_it) < n_snap or len(ck_it) < n_ck:
        raise StoreError(f"{path}: snapshot/checkpoint index shorter than committed (truncated or corrupted store)")
    coords[S.D_ITER] = (S.D_ITER, np.arange(n_it))
    coords["snapshot_iteration"] = (S.D_SNAP, snap_it[:n_snap])
    coords[S.D_SNAP] = (S.D_SNAP, np.arange(n_snap))
    coords[S.D_CKPT] = (S.D_CKPT, np.arange(n_ck))
    coords["checkpoint_iteration"] = (S.D_CKPT, ck_it[:n_ck])
    return _finish_dataset(path, root, attrs, variables, coords, probes, describe)


def _finish_dataset(path, root, attrs, variables, coords, probes, describe=True) -> xr.Dataset:
    ds = xr.Dataset(variables, coords=coords)
    ds.attrs.update({
        "store": str(Path(path).resolve()),
        "run_id": attrs.get(S.ATTR_RUN_ID, Path(path).stem),
        "status": attrs[S.ATTR_STATUS],
        "reason": attrs.get(S.ATTR_REASON, ""),
        "schema_version": attrs[S.ATTR_SCHEMA],
        S.ATTR_LOG_LOGITS: S.log_policy(attrs),  # the minibatch record: full logits or the summary
        "committed": dict(attrs[S.ATTR_COMMITTED]),  # the view this Dataset shows (a live run goes on)
        "config": attrs[S.ATTR_CONFIG],
        "model_info": attrs.get(S.ATTR_MODEL_INFO, {}),
        S.ATTR_HAS_BIAS: bool(attrs.get(S.ATTR_HAS_BIAS, True)),  # absent (older stores): True
        "timings": attrs.get(S.ATTR_TIMINGS, {}),
        "versions": attrs.get(S.ATTR_VERSIONS, {}),
    })
    if isinstance(attrs.get(S.ATTR_PLUGINS), dict):  # a run of a plugin model or dataset: their provenance
        ds.attrs[S.ATTR_PLUGINS] = attrs[S.ATTR_PLUGINS]
    if attrs.get(S.ATTR_DIVERGED_AT) is not None:
        ds.attrs["diverged_at"] = attrs[S.ATTR_DIVERGED_AT]
    if isinstance(attrs.get(S.ATTR_STOP_MET), bool):
        ds.attrs["stop_criterion_met"] = attrs[S.ATTR_STOP_MET]
    if probes:
        res = read_probes(path, root)
        for v in res.variables:  # a probe result never replaces what the run holds
            if v in ds.variables and v not in res.dims:
                raise StoreError(f"{path}: probe variable {_shown(v, 40)} has the name of the run's own "
                                 "(edited or damaged store; recompute with lrprobe compute --force)")
        ds = ds.merge(res, combine_attrs="override", compat="override", join="outer")
    return _describe(ds) if describe else ds


def _label_coords(ds: xr.Dataset) -> xr.Dataset:
    """Labels along the probe dims, as coordinates: the (y, b) of each `group` id (`group_label`
    'y=0,b=1', `group_y`, `group_b`, read off the stored labels) and the state-dict name of each
    `layer` (`layer_name`)."""
    new = {}
    if "group" in ds.coords and ds["group"].dims == ("group",) and S.C_GROUP_LABEL not in ds.coords:
        ids = np.asarray(ds["group"].values)
        splits = [(np.asarray(ds.coords[f"{s}_group"].values), np.asarray(ds.coords[f"{s}_y"].values),
                   np.asarray(ds.coords[f"{s}_b"].values)) for s in S.SPLITS
                  if all(f"{s}_{k}" in ds.coords for k in ("group", "y", "b"))]
        n_b = max([int(b.max()) + 1 for _, _, b in splits if b.size] or [1])
        ys, bs = [], []
        for gid in ids.tolist():
            for g, y, b in splits:
                hit = np.flatnonzero(g == gid)
                if hit.size:
                    ys.append(int(y[hit[0]]))
                    bs.append(int(b[hit[0]]))
                    break
            else:  # no stored sample of that group: the numbering y * n_b + b
                ys.append(int(gid) // n_b)
                bs.append(int(gid) % n_b)
        new[S.C_GROUP_Y] = ("group", np.asarray(ys, dtype=np.int64))
        new[S.C_GROUP_B] = ("group", np.asarray(bs, dtype=np.int64))
        new[S.C_GROUP_LABEL] = ("group", np.asarray([f"y={y},b={b}" for y, b in zip(ys, bs)]))
    if "layer" in ds.dims and S.C_LAYER_NAME not in ds.coords:
        for v in ds.data_vars.values():
            names = v.attrs.get("layers") if "layer" in v.dims else None
            if isinstance(names, str):
                try:
                    names = json.loads(names)
                except ValueError:
                    continue
                if isinstance(names, list) and len(names) == ds.sizes["layer"]:
                    new[S.C_LAYER_NAME] = ("layer", np.asarray([str(n) for n in names]))
                    break
    return ds.assign_coords(new) if new else ds


def _describe(ds: xr.Dataset, described: dict[str, dict] | None = None) -> xr.Dataset:
    """Every variable and coordinate gets its `long_name`, `description` and (where they apply)
    `units` from `schema.describe` for the store's own arrays, the probes' declarations
    (probe/registry.py:describe) for their variables, or `described` (name -> attrs). A stored
    long_name wins (a probe's names its parameters); description and units are the table's: a
    probe result may carry those of the variable it was computed from (xarray keeps attrs
    through arithmetic and reductions). A name nobody described keeps its attrs (the dynamics probe writes its own
    descriptions) and gets its name as long_name if it has none."""
    from ..probe.registry import describe as declared

    ds = _label_coords(ds)
    for name, var in ds.variables.items():
        table = (described or {}).get(name) or S.describe(name) or declared(name)
        if table is None:
            if "long_name" not in var.attrs:
                var.attrs["long_name"] = str(name).replace("_", " ")
            continue
        var.attrs = {**table, **{k: v for k, v in var.attrs.items() if k not in ("description", "units")}}
    return ds


PROBE_LOAD_BYTES = 8 << 20  # probe results smaller than this are read eagerly (attribution maps stay lazy)


def probe_names(root: zarr.Group) -> list[str]:
    """The complete probe results of a run. A `probes` entry that is not a Zarr group, or an entry
    inside it that is a file (where lrprobe only ever writes groups), is refused: it would hide
    results without an error."""
    folder = Path(str(root.store.root)) / S.G_PROBES if isinstance(root.store, CheckedStore) else None
    if folder is not None:
        try:
            entries = os.listdir(folder)
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise StoreError(f"{root.store.root}: {S.G_PROBES} is a file where lrprobe writes its results' group "
                             "(damaged or edited store)") from None
        except OSError as e:
            raise StoreError(f"{root.store.root}: {S.G_PROBES} cannot be read ({e.strerror}; damaged store)") from None
        for e in entries:
            if e != "zarr.json" and not e.startswith(".") and not is_dir_not_link(folder / e):
                raise StoreError(f"{root.store.root}: {S.G_PROBES}/{_shown(e, 40)} is not a probe result's group "
                                 "(damaged or edited store)")
    if S.G_PROBES not in root:
        if folder is not None and entries:
            raise StoreError(f"{root.store.root}: {S.G_PROBES} is not a readable Zarr group (its zarr.json is "
                             "missing or damaged)")
        return []
    # a probe group becomes visible once its writer marked it complete (all arrays written)
    return sorted(name for name, g in root[S.G_PROBES].groups() if g.attrs.get("complete"))


# xarray's CF decoding off: lrscope's probe results use none of it (check_probe_metadata refuses
# its attributes), so no attribute can rescale, mask, re-type or turn a value into a date
_NO_DECODING = dict(mask_and_scale=False, decode_times=False, decode_timedelta=False, use_zarr_fill_value_as_mask=False)


def read_probe(path: str | os.PathLike, name: str, root: zarr.Group | None = None) -> xr.Dataset:
    """One probe's result: in memory when small (most are: aligning a sweep's runs then costs
    nothing, and reading skips dask), lazy otherwise (attribution maps). Every array's metadata
    is checked first (`check_probe_metadata`); errors are one-line `StoreError`s."""
    root = root if root is not None else open_store(path)
    try:
        return _read_probe(path, name, root)
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"{path}: probe {name!r} is unreadable ({type(e).__name__}: {_shown(str(e), 120)}); "
                         "recompute it with lrprobe compute --force") from None


def _read_probe(path, name: str, root: zarr.Group) -> xr.Dataset:
    try:
        group = root[f"{S.G_PROBES}/{name}"]
    except KeyError:
        raise StoreError(f"{path}: no probe result {name!r}") from None
    if not isinstance(group, zarr.Group):
        raise StoreError(f"{path}: probe result {name!r} is not a group (damaged store)")
    attrs = root.attrs.asdict()
    crc = True if isinstance(attrs.get(S.ATTR_SCHEMA), int) and attrs[S.ATTR_SCHEMA] >= S.CHECKSUM_SCHEMA else None
    arrays = dict(group.arrays())
    declared = group.attrs.get(S.ATTR_PROBE_ARRAYS)
    extra: list[str] = []
    if declared is not None:  # the arrays the writer wrote: any other is ignored, a missing one is damage
        if not isinstance(declared, list) or not all(isinstance(a, str) for a in declared):
            raise StoreError(f"{path}: probe {name!r}: its {S.ATTR_PROBE_ARRAYS} attribute is not a list of names "
                             "(edited or damaged store)")
        for a in declared:
            if a not in arrays:
                raise StoreError(f"{path}: probe {name!r} lacks its array {_shown(a, 40)} (damaged store; recompute "
                                 "it with lrprobe compute --force)")
        extra = sorted(set(arrays) - set(declared))
    nbytes = 0
    for aname, arr in arrays.items():
        if aname in extra:
            continue
        where = f"{S.G_PROBES}/{name}/{aname}"
        check_array(arr, strings=True)  # before xarray decodes anything
        check_shape(path, where, arr.shape, arr.chunks)
        if not (isinstance(root.store, CheckedStore) and root.store.check_array_metadata is not None):
            check_probe_metadata(path, where, arr, crc=crc)  # (open_store's hook checked it as it was read)
        nbytes += arr.nbytes
    small = nbytes < PROBE_LOAD_BYTES
    kw = {"chunks": None} if small else {}
    ds = xr.open_zarr(root.store, group=f"{S.G_PROBES}/{name}", consolidated=False, zarr_format=3, **_NO_DECODING,
                      drop_variables=extra or None, **kw)
    for var in ds.variables.values():  # the NaN fill xarray writes on float arrays: no decoding, no attr
        var.attrs.pop("_FillValue", None)
    return ds.load() if small else ds


def read_probes(path: str | os.PathLike, root: zarr.Group | None = None) -> xr.Dataset:
    """All probe results of a run, merged (probe variable names are unique across probes: a name
    found in two results is refused, as the merge would keep one of them)."""
    root = root if root is not None else open_store(path)
    parts = []
    owner: dict[str, str] = {}
    for name in probe_names(root):
        res = read_probe(path, name, root)
        for v in res.variables:
            if v in res.dims:  # a dimension's index (snapshot, group, kappa, ...) is shared
                continue
            if v in owner:
                raise StoreError(f"{path}: variable {_shown(v, 40)} is in the results of both probe {owner[v]!r} "
                                 f"and {name!r} (edited or damaged store; recompute with lrprobe compute --force)")
            owner[v] = name
        parts.append(res)
    if not parts:
        return xr.Dataset()
    return xr.merge(parts, combine_attrs="drop_conflicts", join="outer", compat="override")


def find_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Run stores named by paths: a store itself, a folder of stores, or a glob."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    elif isinstance(paths, (xr.Dataset, xr.DataArray, dict, bytes)) or not isinstance(paths, Iterable):
        raise StoreError(f"expected a path, a glob or a list of them, got {type(paths).__name__}")
    paths = [str(as_path(p)) for p in paths]
    found: list[Path] = []
    for p in paths:
        matches = sorted(_glob.glob(p)) if any(c in p for c in "*?[") else [p]
        if not matches:
            raise StoreError(f"{_shown(p, 200)}: no run stores match")
        for m in matches:
            mp = Path(m)
            try:
                os.stat(mp)
                if (mp / "zarr.json").exists():
                    found.append(mp)
                elif mp.is_dir():
                    found.extend(sorted(q for q in mp.glob("*.zarr") if (q / "zarr.json").exists()))
                else:
                    raise StoreError(f"{_shown(m, 200)}: not a run store or a folder of run stores")
            except FileNotFoundError:
                raise StoreError(f"{_shown(m, 200)}: no such file or directory") from None
            except OSError as e:  # a name too long, no permission
                raise StoreError(f"{_shown(m, 200)}: {e.strerror or type(e).__name__}") from None
    if not found:
        raise StoreError(f"{_shown(', '.join(map(str, paths)), 200)}: no run stores found")
    return found


def sweep_key(config: dict) -> tuple[str, str]:
    """The sweep a run belongs to: its (dataset, model)."""
    return str(config["dataset"]), str(config["model"])


def store_exists(path) -> bool:
    """Whether `path` holds a Zarr group's root metadata: a run store, possibly one whose creation
    was cut off (`half_created`)."""
    return (Path(path) / "zarr.json").is_file()


def half_created(path) -> bool:
    """A store whose creation was cut off before its attributes were written: nothing but an
    attribute-less root zarr.json (anything else is never deleted)."""
    import os

    try:
        return set(os.listdir(path)) <= {"zarr.json"} and not zarr.open_group(str(path), mode="r").attrs.asdict()
    except Exception:
        return False


def group_sweeps(paths, *, skip_unreadable: bool = False) -> dict[tuple[str, str], list[tuple[Path, dict]]]:
    """The run stores under `paths` (as `find_runs`) grouped into sweeps by `sweep_key`, each run
    with its checked root attributes (`run_attrs`: no array is opened), sweeps and runs in the
    order found. The one grouping of the report, the figures and the explorer. A store that
    cannot be read is a `StoreError`, or with `skip_unreadable` left out (the explorer: a store
    being created, a damaged one; `lrprobe ls` says why)."""
    groups: dict[tuple[str, str], list[tuple[Path, dict]]] = {}
    for p in find_runs(paths):
        try:
            attrs = run_attrs(p)
        except Exception:  # a StoreError in one line; in the explorer, whatever a half-written store raises
            if skip_unreadable:
                continue
            raise
        groups.setdefault(sweep_key(attrs[S.ATTR_CONFIG]), []).append((p, attrs))
    return groups


def _regular(chunks: tuple[int, ...], size: int) -> bool:
    """Whether one axis' chunks are all `size` but a last one no larger."""
    return all(c == size for c in chunks[:-1]) and chunks[-1] <= size


def _pad_to_longest(dsets: list[xr.Dataset]) -> list[xr.Dataset]:
    """Pad each run at the end of every dim whose index is a prefix of the longest run's (runs of
    different lengths: iteration, snapshot, checkpoint), in chunks of one size per variable across
    the runs, so that the concat neither reindexes (xarray's outer join masks every chunk of a
    lazy array) nor unifies chunk boundaries (a run shorter than one chunk would cut every other
    run's chunks at its length). Dims whose indexes are not prefixes are left to the outer join."""
    from .zarr_internals import maybe_promote  # the reindex's own promotion (int -> float, ...)

    longest: dict[str, np.ndarray] = {}
    chunk: dict[tuple[str, str], int] = {}
    for d in dsets:
        for dim, idx in d.indexes.items():
            if dim in d.dims and len(idx) > len(longest.get(dim, ())):
                longest[dim] = np.asarray(idx)
    for d in dsets:
        for name, var in d.variables.items():
            for ax, dim in enumerate(var.dims):
                if dim in longest and var.chunks and name != dim:
                    chunk[name, dim] = max(chunk.get((name, dim), 0), var.chunks[ax][0])
    out = []
    for d in dsets:
        widths = {}
        for dim, full in longest.items():
            if dim in d.indexes and len(d.indexes[dim]) < len(full):
                own = np.asarray(d.indexes[dim])
                if own.dtype.kind in "iuf" and np.array_equal(own, full[:len(own)]):
                    widths[dim] = (0, len(full) - len(own))
        padded, changed = {}, bool(widths)
        for name, var in d.variables.items():
            if name in widths:
                continue
            w = {dim: widths[dim] for dim in var.dims if dim in widths}
            if w:
                dtype, fill = maybe_promote(var.dtype)
                var = var.astype(dtype).pad(w, mode="constant", constant_values=fill)
            want = {dim: chunk[name, dim] for dim in var.dims if (name, dim) in chunk}
            if var.chunks and not all(_regular(var.chunks[var.dims.index(dim)], c) for dim, c in want.items()):
                var = var.chunk(want)
                changed = True
            padded[name] = var
        if not changed:  # the longest run, or as long: as it is
            out.append(d)
            continue
        coords = {k: v for k, v in padded.items() if k in d.coords}
        coords.update({dim: longest[dim] for dim in widths})
        out.append(xr.Dataset({k: v for k, v in padded.items() if k not in d.coords}, coords=coords, attrs=d.attrs))
    return out


_CONCAT = dict(dim="run", join="outer", coords="minimal", compat="override", data_vars="all",
               combine_attrs="drop", fill_value=np.nan)


def _stack_runs(dsets: list[xr.Dataset]) -> xr.Dataset | None:
    """xr.concat(dsets, "run", **_CONCAT) for runs alike in variables and dims (a sweep, once
    padded), as one stack per variable: ~10x faster than xarray's concat, which expands every
    variable of every run first. Variables on a dim whose index differs between runs (which
    checkpoints were attributed) or missing from some runs still go through xr.concat's outer
    join. None when the runs differ in the size of a dim without an index."""
    first = dsets[0]
    names = list(dict.fromkeys(n for d in dsets for n in d.data_vars))
    # dims whose index is not the same in every run (missing from some: a probe not computed there)
    ragged = {k for k in set().union(*(d.indexes.keys() for d in dsets))
              if not all(k in d.indexes and d.indexes[k].equals(first.indexes[k]) for d in dsets)}
    stack, rest = {}, []
    for n in names:
        parts = [d.variables.get(n) for d in dsets]
        r = parts[0]
        if any(v is None or v.dims != r.dims for v in parts) or ragged & set(r.dims):
            rest.append(n)  # missing from some runs (a diverged run's), or on a ragged dim
            continue
        if any(v.shape != r.shape for v in parts):
            return None
        dtype = np.result_type(*(v.dtype for v in parts))  # a padded run's ints became floats
        data = [v.data if v.dtype == dtype else v.data.astype(dtype) for v in parts]
        lazy = any(isinstance(x, da.Array) for x in data)
        stack[n] = (("run",) + r.dims, da.stack(data) if lazy else np.stack(data))
    coords = {}
    for d in dsets:  # the first run's, as compat="override" takes them, and any the first lacks
        for k in d.coords.keys() - coords.keys():
            if not ragged & set(d.variables[k].dims):
                coords[k] = d.variables[k]
    out = xr.Dataset(stack, coords=coords)
    if rest:
        part = xr.concat([d[[n for n in rest if n in d.data_vars]] for d in dsets], **_CONCAT)
        out = xr.merge([out, part], compat="override", join="outer", combine_attrs="drop")
    return out


def open_sweep(paths, *, probes: bool = True) -> xr.Dataset:
    """Open a sweep (a folder of run stores, a glob, or a list) as one lazy Dataset along `run`.

    ``run`` is indexed by run id (``sw.sel(run="parity-fcn-lr0.75-s0")``; ids that repeat, runs
    of the same name from two folders, become ``<folder>/<run id>``). Every config field that
    varies across the runs becomes a ``run`` coordinate (always: dataset, model, lr, seed),
    plus ``status``; a field whose name is a variable of the runs takes the ``cfg_`` prefix
    (``cfg_loss``: 'ce'/'focal', beside the per-step ``loss``). ``lr`` is each run's configured
    learning rate; the per-step one is ``lr_schedule``. Every variable and coordinate carries
    ``long_name``, ``description`` and, where they apply, ``units`` (probe results keep their
    own attrs).

    Runs of different lengths are aligned on ``iteration`` (the log: ``sel(iteration=500)`` is
    every run's step 500, NaN past a run's end) and padded at the end of ``snapshot`` and
    ``checkpoint``, which are positions in each run's schedule: the iteration of each is
    ``snapshot_iteration`` (run, snapshot). So ``isel(snapshot=-1)`` is the longest runs' last
    snapshot and NaN for the others: a run's end is ``last_snapshot(x)`` (the ``final_value``
    variables hold it already), a common point in training is ``at_iteration(x, it)``.

    Examples
    --------
    >>> sw = lrscope.open_sweep("runs/")
    >>> sw.unbiased_accuracy_final.groupby("lr").mean()          # each run's final snapshot
    >>> lrscope.last_snapshot(sw.unbiased_accuracy).groupby("lr").mean()   # the same
    >>> lrscope.at_iteration(sw.probe_accuracy, 64).groupby("lr").mean()    # after 64 steps
    >>> sw.sel(run="parity-fcn-lr0.75-s0").lr_schedule.plot()
    """
    runs = find_runs(paths)
    # the first run of each data/model layout is opened in full; the others reuse its array
    # metadata and labels (the labels are kept once in the sweep anyway), reading only their
    # root attributes and snapshot/checkpoint indices: ~10x faster for large sweeps
    layouts: list[dict] = []
    dsets = []
    for p in runs:
        ds, lay = _open_run(p, probes=probes, layouts=layouts, describe=False)  # described once, below
        if not any(lay is known for known in layouts):
            layouts.append(lay)
        dsets.append(ds)
    configs = [d.attrs["config"] for d in dsets]
    keys = sorted({k for c in configs for k in c})
    # a field missing from some configs (stores written before it existed, which ran with its
    # default) varies only if the stores that have it disagree
    varying = [k for k in keys
               if len({json.dumps(c[k], sort_keys=True) for c in configs if k in c}) > 1 or k in ALWAYS_COORDS]
    taken = {n for d in dsets for n in d.variables} | set().union(*(d.dims for d in dsets)) | {"run", "status"}
    run_coords: dict[str, Any] = {}
    described: dict[str, dict] = {}
    for k in varying:
        vals = [c.get(k) for c in configs]
        if any(isinstance(v, (dict, list)) for v in vals):
            vals = [json.dumps(v, sort_keys=True) for v in vals]
        name = S.CONFIG_COORD.get(k, k)
        if name in taken:  # never replace a variable of the runs
            name = S.CONFIG_PREFIX + k
        run_coords[name] = ("run", np.asarray(vals))
        described[name] = S.describe_config(k)
    run_coords["status"] = ("run", np.asarray([d.attrs["status"] for d in dsets]))
    run_coords["stop_criterion_met"] = ("run", np.asarray([
        d.attrs["status"] == S.STATUS_COMPLETED and d.attrs.get("stop_criterion_met", True) for d in dsets]))
    # per-run coordinates (snapshot/checkpoint iterations) travel as data variables through the
    # concat so they gain the `run` dim; shared label coordinates are kept once
    from ..probe.registry import per_run_coords

    per_run = ["snapshot_iteration", "checkpoint_iteration", *per_run_coords()]  # the probes declare theirs
    stripped = []
    sizes = {}
    for d, p in zip(dsets, runs):
        for dim in S.D_SAMPLE.values():
            if dim in d.sizes and sizes.setdefault(dim, d.sizes[dim]) != d.sizes[dim]:
                raise StoreError(f"{p}: its {dim} size differs from the other runs' (mixed datasets?); "
                                 "open those runs as separate sweeps")
        d = d.reset_coords([c for c in per_run if c in d.coords])
        d.attrs = {}
        stripped.append(d)
    stripped = _pad_to_longest(stripped)
    sw = _stack_runs(stripped)
    if sw is None:  # runs that differ beyond padding: xarray's outer join sorts them out
        sw = xr.concat(stripped, **_CONCAT)
    sw = sw.set_coords([c for c in per_run if c in sw])
    sw = sw.assign_coords(run=_run_index(dsets), **run_coords)
    # the stack and the concat drop the variables' attrs: each takes those of the first run that has it
    for name, var in sw.variables.items():
        for d in dsets:
            own = d.variables.get(name)
            if own is not None:
                if own.attrs:
                    var.attrs = dict(own.attrs)
                break
    sw = _describe(sw, described)
    sw.attrs["stores"] = [d.attrs["store"] for d in dsets]
    sw.attrs["configs"] = configs
    return sw


def _run_index(dsets: list[xr.Dataset]) -> np.ndarray:
    """Run ids, unique: a repeated id (the same run in two folders) becomes <folder>/<id>, and
    the store's path where even that repeats."""
    ids = [d.attrs["run_id"] for d in dsets]
    if len(set(ids)) < len(ids):
        seen = {i: ids.count(i) for i in ids}
        ids = [f"{Path(d.attrs['store']).parent.name}/{i}" if seen[i] > 1 else i for d, i in zip(dsets, ids)]
        if len(set(ids)) < len(ids):
            ids = [d.attrs["store"] for d in dsets]
    return np.asarray(ids)


def last_snapshot(x: xr.DataArray | xr.Dataset) -> xr.DataArray | xr.Dataset:
    """Each run's value at its own last snapshot: ``x`` from `open_sweep` (runs padded to the
    longest, so ``isel(snapshot=-1)`` is NaN for the shorter ones) or `open_run`. The result
    has no ``snapshot`` dim; its ``snapshot_iteration`` says where each run ended.

    >>> lrscope.last_snapshot(sw.unbiased_accuracy).groupby("lr").mean()
    """
    _check_view(x, "last_snapshot")
    if "snapshot" not in x.dims:
        return x
    n = x["snapshot_iteration"].notnull().sum("snapshot")
    return x.isel(snapshot=(n - 1).clip(min=0))


def at_iteration(x: xr.DataArray | xr.Dataset, iteration: int) -> xr.DataArray | xr.Dataset:
    """Each run's value at the snapshot taken after `iteration` steps, NaN for a run without
    one (it stopped earlier, or its schedule has no snapshot there). Runs of one sweep share
    their snapshot schedule but their last snapshot, so any ``snapshot_iteration`` of the
    longest run below the others' ends is common to all.

    >>> lrscope.at_iteration(sw.probe_accuracy, 64).groupby("lr").mean()
    """
    _check_view(x, "at_iteration")
    if isinstance(iteration, bool) or not isinstance(iteration, (int, np.integer)):
        raise StoreError(f"at_iteration: iteration must be an integer step, got {_shown(iteration, 40)}")
    if "snapshot" not in x.dims:
        return x
    hit = x["snapshot_iteration"] == iteration
    found = hit.any("snapshot")
    out = x.isel(snapshot=hit.argmax("snapshot"))
    return out.where(found)


def _check_view(x: Any, fn: str) -> None:
    if not isinstance(x, (xr.DataArray, xr.Dataset)):
        raise StoreError(f"{fn}: expected a DataArray or Dataset from open_run / open_sweep, got "
                         f"{type(x).__name__} {_shown(x, 40)}")
    if "snapshot" in x.dims and "snapshot_iteration" not in x.coords:
        raise StoreError(f"{fn}: this {type(x).__name__} has a snapshot dim but no snapshot_iteration coordinate "
                         "(not read by open_run / open_sweep, or the coordinate was dropped)")
