"""Writing a run store. Training calls this with plain numpy arrays; it never sees torch.

Crash safety: every append writes its data *beyond* the committed lengths first, then
``commit()`` rewrites the root attributes in one metadata write (`set_attrs`; atomic on a local
store: temp file + rename). A crash at any point leaves the previous commit intact; readers trim
to it and a resume truncates the arrays back to the last committed checkpoint.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import StoreError
from . import schema as S
from .checked import ARRAY_CONFIG, COMPRESSORS
from .lock import RunLock

# Fault injection for the crash tests: LRSCOPE_CRASH_AT="<point>:<n>" SIGKILLs this process the
# n-th time it reaches <point> (flush, snapshot, checkpoint, optimizer, commit, shrink: a finished
# run's arrays cut to length before its last commit; probe: an old probe result being deleted),
# mid-write.
_CRASH = os.environ.get("LRSCOPE_CRASH_AT", "")
_crash_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    if not _CRASH:
        return
    point, _, nth = _CRASH.partition(":")
    if point == name:
        _crash_hits[name] = _crash_hits.get(name, 0) + 1
        if _crash_hits[name] == int(nth or 1):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def set_attrs(node: zarr.Group | zarr.Array, attrs: dict[str, Any]) -> None:
    """Merge `attrs` into a Zarr node's attributes with one write of its zarr.json. Not
    ``node.attrs.update(attrs)``: zarr's Attributes is a MutableMapping whose update() rewrites
    zarr.json once per key, so a process killed in between left a commit half made (its
    committed lengths without its status: a finished run resumed at its end and recorded its final
    snapshot twice; a new store with nothing but the lrscope marker, which no reader accepts)."""
    node.update_attributes(dict(attrs))


# Chunk sizes: log rows are flushed in blocks; a chunk holds several blocks.
LOG_CHUNK = 4096
LOG_BATCH_CHUNK = 256
MAX_CHUNK_ELEMS = 4_000_000  # per-sample snapshot arrays: at most ~16 MB float32 per chunk


def _versions() -> dict[str, str]:
    import numpy
    import xarray

    from .. import __version__

    v = {"lrscope": __version__, "zarr": zarr.__version__, "numpy": numpy.__version__,
         "xarray": xarray.__version__, "python": platform.python_version()}
    try:
        import torch

        v["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return v


class RunWriter:
    """Appends to one run store. Use :meth:`create` for a new run, :meth:`resume` to continue."""

    def __init__(self, root: zarr.Group, path: Path, lock: RunLock | None = None):
        self.root = root
        self.path = path
        self.lock = lock
        a = root.attrs.asdict()
        self.committed: dict[str, int] = dict(a[S.ATTR_COMMITTED])
        self.optim_keys: dict[str, list[str]] = dict(a.get("optimizer_keys", {}))
        self.timings: dict[str, float] = dict(a.get(S.ATTR_TIMINGS, {}))
        self._log_buf: list[dict[str, np.ndarray]] = []
        self._snap_buf: list[dict] = []
        self.buffered_snapshot_bytes = 0
        self._handles: dict[str, zarr.Array] = {}  # open arrays: each lookup would re-read metadata
        self.log_policy = S.log_policy(a)  # what the minibatch record holds: full logits or the summary

    def _array(self, group: str, name: str) -> zarr.Array:
        key = f"{group}/{name}"
        if key not in self._handles:
            self._handles[key] = self.root[group][name].with_config(ARRAY_CONFIG)
        return self._handles[key]

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        run_id: str,
        config: dict[str, Any],
        labels: dict[str, dict[str, np.ndarray]],
        probe_inputs: np.ndarray,
        probe_test_index: np.ndarray,
        regions: dict[str, np.ndarray],
        model_info: dict[str, Any],
        params: dict[str, np.ndarray],
        batch_size: int,
        num_classes: int,
        device: str,
        log_logits: str = S.LOG_FULL,
        lock: RunLock | None = None,
        has_bias: bool = True,
        plugins: dict[str, dict] | None = None,
    ) -> "RunWriter":
        """A new store. `log_logits` is the resolved minibatch-record policy (full or summary,
        schema.resolve_log_logits); a full store is written as schema 2 (the layout an older
        lrscope reads), a summary store as schema 3. `has_bias`: whether the labels' b is a bias
        attribute (False: a placeholder, b = y; the root attribute `has_bias`)."""
        path = Path(path)
        if log_logits not in S.LOG_POLICIES:
            raise StoreError(f"log_logits must be one of {', '.join(S.LOG_POLICIES)} here, got {log_logits!r}")
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        set_attrs(root, {
            S.ATTR_KIND: "run",
            S.ATTR_SCHEMA: S.SUMMARY_SCHEMA if log_logits == S.LOG_SUMMARY else S.CHECKSUM_SCHEMA,
            S.ATTR_LOG_LOGITS: log_logits,
            S.ATTR_RUN_ID: run_id,
            S.ATTR_CONFIG: config,
            S.ATTR_STATUS: S.STATUS_RUNNING,
            S.ATTR_REASON: "created",
            S.ATTR_COMMITTED: {"iteration": 0, "snapshot": 0, "checkpoint": 0},
            S.ATTR_VERSIONS: _versions(),
            S.ATTR_DEVICE: device,
            S.ATTR_TIMINGS: {},
            S.ATTR_MODEL_INFO: model_info,
            S.ATTR_REGIONS: sorted(regions),
            S.ATTR_HAS_BIAS: bool(has_bias),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({S.ATTR_PLUGINS: plugins} if plugins else {}),
        })
        data = root.create_group(S.G_DATA)
        for split, arrays in labels.items():
            g = data.create_group(split)
            dim = S.D_SAMPLE[split]
            for name, arr in arrays.items():
                _write_full(g, name, np.asarray(arr), (dim,))
        probe = data["probe"] if "probe" in labels else data.create_group("probe")
        _write_full(probe, S.A_TEST_INDEX, probe_test_index.astype(np.int64), (S.D_SAMPLE["probe"],))
        in_dims = tuple(f"input_{i}" for i in range(probe_inputs.ndim - 1))
        _write_full(probe, S.A_INPUTS, probe_inputs, (S.D_SAMPLE["probe"], *in_dims))
        if regions:
            names = sorted(regions)
            masks = np.stack([regions[n] for n in names]).astype(bool)
            _write_full(data, "regions", masks, ("region", *in_dims))

        log = root.create_group(S.G_LOG)
        for name in S.LOG_SCALARS:
            dtype = "int32" if name.endswith("_count") else "float32"
            _append_array(log, name, (), dtype, (S.D_ITER,), LOG_CHUNK)
        _append_array(log, S.A_BATCH_INDEX, (batch_size,), "int32", (S.D_ITER, S.D_SLOT), LOG_BATCH_CHUNK, fill=-1)
        if log_logits == S.LOG_FULL:
            _append_array(log, S.A_BATCH_LOGITS, (batch_size, num_classes), "float16",
                          (S.D_ITER, S.D_SLOT, S.D_CLASS), LOG_BATCH_CHUNK)
        else:  # the summary: a few values per slot, whatever the classes
            for name, (dtype, fill) in S.SUMMARY_ARRAYS.items():
                _append_array(log, name, (batch_size,), dtype, (S.D_ITER, S.D_SLOT), LOG_BATCH_CHUNK, fill=fill)

        snaps = root.create_group(S.G_SNAP)
        _append_array(snaps, S.A_SNAP_ITER, (), "int64", (S.D_SNAP,), 1024)
        n_test = len(labels["test"]["y"])
        n_train = len(labels["train"]["y"])
        n_probe = len(probe_test_index)
        _append_array(snaps, S.A_TEST_LOGITS, (n_test, num_classes), "float32",
                      (S.D_SNAP, S.D_SAMPLE["test"], S.D_CLASS), 1, fill=np.nan)
        _append_array(snaps, S.A_PROBE_LOGITS, (len(probe_test_index), num_classes), "float32",
                      (S.D_SNAP, S.D_SAMPLE["probe"], S.D_CLASS), 1, fill=np.nan)
        _append_array(snaps, S.A_TRAIN_LOGITS, (n_train, num_classes), "float32",
                      (S.D_SNAP, S.D_SAMPLE["train"], S.D_CLASS), 1, fill=np.nan)
        _append_array(snaps, S.A_PROBE_FEATURES, (n_probe, model_info["num_features"]), "float32",
                      (S.D_SNAP, S.D_SAMPLE["probe"], S.D_NEURON), 1)
        flags = [S.A_TEST_EVALUATED, S.A_TRAIN_EVALUATED]
        if "val" in labels:  # a validation split: evaluated at the full snapshots, like the test split
            _append_array(snaps, S.A_VAL_LOGITS, (len(labels["val"]["y"]), num_classes), "float32",
                          (S.D_SNAP, S.D_SAMPLE["val"], S.D_CLASS), 1, fill=np.nan)
            flags.append(S.A_VAL_EVALUATED)
        for name in flags:
            _append_array(snaps, name, (), "bool", (S.D_SNAP,), 1024, fill=False)

        ck = root.create_group(S.G_CKPT)
        _append_array(ck, S.A_CKPT_ITER, (), "int64", (S.D_CKPT,), 1024)
        pg = root.create_group(S.G_PARAMS)
        for name, arr in params.items():
            dims = (S.D_CKPT, *(f"{name}_{i}" for i in range(arr.ndim)))
            _append_array(pg, name, arr.shape, str(arr.dtype), dims, 1)
        root.create_group(S.G_OPTIM)
        return cls(root, path, lock)

    @classmethod
    def resume(cls, path: str | os.PathLike, lock: RunLock | None = None) -> "RunWriter":
        """Reopen a run for appending and truncate everything after its last checkpoint."""
        path = Path(path)
        root = zarr.open_group(str(path), mode="r+", zarr_format=3)
        w = cls(root, path, lock)
        k = w.committed["checkpoint"]
        if k < 1:
            raise StoreError(f"{path}: no committed checkpoint to resume from")
        it = int(root[S.G_CKPT][S.A_CKPT_ITER][k - 1])
        snap_iters = np.asarray(root[S.G_SNAP][S.A_SNAP_ITER][: w.committed["snapshot"]])
        w.committed = {"iteration": it, "snapshot": int((snap_iters <= it).sum()), "checkpoint": k}
        w.commit(status=S.STATUS_RUNNING, reason=f"resumed from iteration {it}")
        w._shrink_to_committed()
        return w

    def _shrink_to_committed(self) -> None:
        """Resize appendable arrays down to the committed lengths (after the commit)."""
        for group, key in ((S.G_LOG, "iteration"), (S.G_SNAP, "snapshot"), (S.G_CKPT, "checkpoint"),
                           (S.G_PARAMS, "checkpoint")):
            n = self.committed[key]
            for name, arr in self.root[group].arrays():
                if arr.shape[0] > n:
                    arr.resize((n, *arr.shape[1:]))
                self._handles[f"{group}/{name}"] = arr.with_config(ARRAY_CONFIG)

    # ------------------------------------------------------------------ appends
    def append_log(self, rows: dict[str, np.ndarray]) -> None:
        """Buffer a block of log rows (each value has leading dim = number of rows)."""
        self._log_buf.append(rows)

    def flush(self) -> None:
        """Write the buffered log rows and snapshots beyond the committed lengths; they become
        visible at the next commit(). Rows after the last checkpoint are dropped by a resume
        anyway, so holding them in memory until then loses nothing."""
        if self._log_buf:
            block = {k: np.concatenate([r[k] for r in self._log_buf]) for k in self._log_buf[0]}
            self._log_buf = []
            start = self.committed["iteration"]
            n = len(block["loss"])
            _write_many([(self._array(S.G_LOG, name), start, values) for name, values in block.items()])
            self.committed["iteration"] = start + n  # takes effect at the next commit()
        crash_point("flush")
        if self._snap_buf:
            k0 = self.committed["snapshot"]
            snaps, self._snap_buf, self.buffered_snapshot_bytes = self._snap_buf, [], 0
            writes = [(self._array(S.G_SNAP, S.A_SNAP_ITER), k0,
                       np.array([s_[S.A_SNAP_ITER] for s_ in snaps], dtype=np.int64))]
            present = self._snapshot_arrays()
            for name, flag in S.EVALUATED.items():
                if flag in present:  # schema 2: which logits rows hold data
                    writes.append((self._array(S.G_SNAP, flag), k0,
                                   np.array([s_.get(name) is not None for s_ in snaps], dtype=bool)))
            for name in (S.A_TEST_LOGITS, S.A_PROBE_LOGITS, S.A_PROBE_FEATURES, S.A_TRAIN_LOGITS, S.A_VAL_LOGITS):
                if name not in present:  # val_logits: only a run with a validation split has them
                    continue
                arr = self._array(S.G_SNAP, name)
                _ensure_rows(arr, k0 + len(snaps))
                # consecutive rows that hold data are written as one block; missing rows keep
                # the NaN fill value (never materialised on disk)
                j = 0
                while j < len(snaps):
                    if snaps[j].get(name) is None:
                        j += 1
                        continue
                    e = j
                    while e < len(snaps) and snaps[e].get(name) is not None:
                        e += 1
                    writes.append((arr, k0 + j, np.stack([snaps[q][name] for q in range(j, e)]).astype(np.float32)))
                    j = e
            _write_many(writes[: len(writes) // 2])
            crash_point("snapshot")
            _write_many(writes[len(writes) // 2:])
            self.committed["snapshot"] = k0 + len(snaps)

    def _snapshot_arrays(self) -> set[str]:
        """The names of the snapshots group's arrays (read once)."""
        if not hasattr(self, "_snap_names"):
            self._snap_names = {name for name, _ in self.root[S.G_SNAP].arrays()}
        return self._snap_names

    def write_snapshot(self, iteration: int, *, probe_features: np.ndarray, probe_logits: np.ndarray,
                       test_logits: np.ndarray | None = None, train_logits: np.ndarray | None = None,
                       val_logits: np.ndarray | None = None) -> None:
        """Buffer one snapshot (written at the next flush). Logits not evaluated are None
        (`val_logits`: also where the store has no validation split)."""
        snap = {S.A_SNAP_ITER: iteration, S.A_PROBE_FEATURES: probe_features, S.A_PROBE_LOGITS: probe_logits,
                S.A_TEST_LOGITS: test_logits, S.A_TRAIN_LOGITS: train_logits, S.A_VAL_LOGITS: val_logits}
        self._snap_buf.append(snap)
        self.buffered_snapshot_bytes += sum(v.nbytes for v in snap.values() if isinstance(v, np.ndarray))

    def write_checkpoint(self, iteration: int, params: dict[str, np.ndarray], optim: dict[str, np.ndarray]) -> None:
        k = self.committed["checkpoint"]
        _write_rows(self._array(S.G_CKPT, S.A_CKPT_ITER), k, np.array([iteration], dtype=np.int64))
        items = [(self._array(S.G_PARAMS, name), k, arr[None]) for name, arr in params.items()]
        _write_many(items[:1])
        crash_point("checkpoint")
        _write_many(items[1:])
        slot = k % S.OPTIM_SLOTS
        og = self.root[S.G_OPTIM]
        sg = og[str(slot)] if str(slot) in og else og.create_group(str(slot))
        for name, arr in optim.items():
            arr = np.asarray(arr)
            if name in sg and sg[name].shape == arr.shape and sg[name].dtype == arr.dtype:
                sg[name].with_config(ARRAY_CONFIG)[...] = arr
            else:  # one chunk per state tensor (a 0-d one, such as Adam's step, has chunk shape ())
                sg.create_array(name, shape=arr.shape, dtype=arr.dtype, overwrite=True,
                                chunks=arr.shape if arr.size else None, compressors=COMPRESSORS,
                                config=ARRAY_CONFIG)[...] = arr
            crash_point("optimizer")
        self.optim_keys[str(slot)] = sorted(optim)
        self.committed["checkpoint"] = k + 1

    # ------------------------------------------------------------------ commit / status
    def commit(self, status: str | None = None, reason: str | None = None, **extra: Any) -> None:
        attrs: dict[str, Any] = {S.ATTR_COMMITTED: dict(self.committed), "optimizer_keys": self.optim_keys,
                                 S.ATTR_TIMINGS: self.timings}
        if status is not None:
            attrs[S.ATTR_STATUS] = status
        if reason is not None:
            attrs[S.ATTR_REASON] = reason
        attrs.update(extra)
        crash_point("commit")
        set_attrs(self.root, attrs)

    def finish(self, status: str, reason: str, **extra: Any) -> None:
        """The last flush and commit. Arrays grow in steps; a finished store is exact: they are cut
        to the lengths about to be committed *before* the commit (only uncommitted rows go), so a
        crash in between leaves a resumable run, never a finished store with rows past its end."""
        self.flush()
        self._shrink_to_committed()
        crash_point("shrink")
        self.commit(status=status, reason=reason, **extra)


# ------------------------------------------------------------------------ array helpers
def chunk_rows(shape: tuple[int, ...], rows: int) -> tuple[int, ...]:
    """Chunk shape: `rows` along the appendable dim; per-sample dims split so a chunk stays
    under MAX_CHUNK_ELEMS."""
    if not shape:
        return (rows,)
    inner = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    first = max(1, min(shape[0], MAX_CHUNK_ELEMS // max(1, inner * rows)))
    return (rows, first, *shape[1:])


def _append_array(group: zarr.Group, name: str, row_shape: tuple[int, ...], dtype: str,
                  dims: tuple[str, ...], rows_per_chunk: int, fill: float | int | None = 0) -> zarr.Array:
    return group.create_array(
        name, shape=(0, *row_shape), dtype=dtype, chunks=chunk_rows(tuple(row_shape), rows_per_chunk),
        dimension_names=dims, fill_value=fill, compressors=COMPRESSORS, config=ARRAY_CONFIG)


def _write_full(group: zarr.Group, name: str, arr: np.ndarray, dims: tuple[str, ...]) -> None:
    if arr.dtype == object:
        raise StoreError("refusing to write an object array (no pickle in stores)")
    a = group.create_array(name, shape=arr.shape, dtype=arr.dtype, dimension_names=dims,
                           chunks=arr.shape if arr.size else None, compressors=COMPRESSORS, config=ARRAY_CONFIG)
    a[...] = arr


def _ensure_rows(arr: zarr.Array, end: int) -> None:
    """Grow the leading dim to at least `end`, in whole chunks (at least 16 rows) so most appends
    skip the metadata rewrite; readers only ever look at the committed rows."""
    if arr.shape[0] < end:
        step = max(arr.chunks[0], 16)
        arr.resize((-(-end // step) * step, *arr.shape[1:]))


def _write_many(items: list[tuple[zarr.Array, int, np.ndarray]]) -> None:
    """Write rows into several arrays concurrently (one trip through Zarr's event loop)."""
    import asyncio

    from .zarr_internals import sync

    async def one(arr: zarr.Array, start: int, values: np.ndarray) -> None:
        aa = arr.async_array
        end = start + len(values)
        if aa.metadata.shape[0] < end:
            step = max(arr.chunks[0], 16)
            await aa.resize((-(-end // step) * step, *aa.metadata.shape[1:]))
        await aa.setitem(slice(start, end), values)

    async def all_() -> None:
        await asyncio.gather(*(one(*it) for it in items))

    if items:
        sync(all_())


def _write_rows(arr: zarr.Array, start: int, values: np.ndarray) -> None:
    _ensure_rows(arr, start + len(values))
    arr[start:start + len(values)] = values

