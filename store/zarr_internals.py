"""The only module that reaches into Zarr's and xarray's non-public modules.

lrscope needs a few things their public APIs do not offer: running several of Zarr's coroutines in
one trip through its event loop (concurrent reads and writes of small arrays: the recorder's
per-step rows, the reader's index arrays), an array object from metadata lrscope has already
checked (the reader binds each run's chunks to its checked layout without re-reading zarr.json),
Zarr's own chunk-shape guess and metadata parser (to check stored metadata against what lrscope
writes), and xarray's dtype promotion for padding (what its reindex would do). Each is imported
here once; tests/test_zarr_internals.py checks that every one still exists and behaves as used,
so a Zarr or xarray release that moves one fails there, loudly, with the name of what moved.
"""

from __future__ import annotations

from typing import Any

from xarray.core.dtypes import maybe_promote  # noqa: F401 - the reindex's own promotion (int -> float, ...)
from zarr.core.array import Array, AsyncArray
from zarr.core.buffer import default_buffer_prototype  # noqa: F401
from zarr.core.chunk_grids import normalize_chunks  # noqa: F401
from zarr.core.metadata.v3 import ArrayV3Metadata  # noqa: F401
from zarr.core.sync import sync  # noqa: F401 - run a coroutine on Zarr's event loop, from sync code
from zarr.storage import StorePath


def array_from_metadata(metadata: Any, store, path: str) -> Array:
    """A zarr.Array at `path` of `store` with the given (already checked) metadata, built without
    reading the node's zarr.json again."""
    return Array(AsyncArray(metadata=metadata, store_path=StorePath(store, path)))

