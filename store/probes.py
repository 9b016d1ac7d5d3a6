"""Writing probe results into a run store (`probes/<name>`), and their provenance: the one owner
of the `probes/` group's layout (the reader, `read_probe` / `read_probes`, is in store/reader.py).
The runner (probe/runner.py) only schedules probes and hands their Datasets here.

A result is an xarray Dataset whose attributes carry its provenance (probe, probe_format,
lrscope_version, params, source_committed, source_status, seconds) and `complete`, set last
together with the list of the arrays written (`lrscope_arrays`): readers ignore a group without
the mark, and any array of the group not on the list.
"""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr
import zarr

from . import schema as S
from .checked import COMPRESSORS
from .reader import open_store
from .writer import crash_point, set_attrs
from .zarr_internals import sync


def stored_provenance(root: zarr.Group, name: str) -> dict | None:
    """The stored provenance of probe `name`, or None when it has no complete result."""
    key = f"{S.G_PROBES}/{name}"
    try:
        g = root[key]
    except KeyError:
        return None
    a = g.attrs.asdict()
    return a if a.get("complete") else None


def write_probe(path: Path, name: str, res: xr.Dataset) -> None:
    """Write one probe's Dataset; mark it complete only after all its arrays are written. An older
    result loses its mark before it is deleted, so a write cut short (Ctrl-C, SIGKILL) never
    leaves the mark over a mix of old and missing arrays.

    The Dataset is encoded by xarray into an in-memory Zarr store, whose keys are then written to
    the run's store all at once: xarray writing straight to disk waits on one small file write
    after another (~12 ms an array here, ~1 s for all probes of a run)."""
    group = f"{S.G_PROBES}/{name}"
    root = zarr.open_group(str(path), mode="r+")
    probes = root[S.G_PROBES] if S.G_PROBES in root else root.create_group(S.G_PROBES)
    if name in probes:
        set_attrs(probes[name], {"complete": 0})
        crash_point("probe")  # the crash tests stop here (old arrays intact, unmarked) or after the delete
        sync(root.store.delete_dir(group))
        crash_point("probe")
    res = res.copy()
    for k, v in list(res.variables.items()):
        v.encoding = {}
        if v.dtype.kind == "U":  # fixed-width unicode has no Zarr v3 spec; variable-length strings do
            res[k] = v.astype(object)
    # like the run's arrays: checksummed, every chunk written (a missing one is damage)
    encoding = {k: {"compressors": COMPRESSORS} for k, v in res.variables.items() if v.dtype.kind in "biuf"}
    mem = zarr.storage.MemoryStore()
    res.to_zarr(mem, mode="w", zarr_format=3, consolidated=False, compute=True, encoding=encoding,
                write_empty_chunks=True)
    sync(_copy_store(mem, root.store, group))
    crash_point("probe")  # arrays written, not yet marked
    # the arrays it wrote, with the mark (one metadata write): readers read these and ignore any other
    set_attrs(zarr.open_group(str(path), path=group, mode="r+"),
              {S.ATTR_PROBE_ARRAYS: sorted(str(k) for k in res.variables), "complete": 1})


async def _copy_store(src, dst, prefix: str) -> None:
    """Every key of `src` written to `dst` under `prefix`, concurrently."""
    import asyncio

    from .zarr_internals import default_buffer_prototype

    proto = default_buffer_prototype()

    async def one(key: str) -> None:
        await dst.set(f"{prefix}/{key}", await src.get(key, prototype=proto))

    await asyncio.gather(*[one(k) async for k in src.list()])


def probe_seconds(path: str | os.PathLike) -> dict[str, float]:
    """Seconds each stored probe took (from its provenance)."""
    root = open_store(path)
    out = {}
    if S.G_PROBES in root:
        for name, g in root[S.G_PROBES].groups():
            out[name] = float(g.attrs.get("seconds", float("nan")))
    return out
