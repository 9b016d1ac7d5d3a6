"""Reading a run store without trusting it: checksums, missing chunks, symlinks, bounds.

Every array lrscope writes (schema 2 on) ends its codec chain with Zarr v3's ``crc32c``
checksum, and every chunk within an array's shape is written, even one that equals the fill
value (``write_empty_chunks``). A reader can therefore tell damage from data:

- a chunk whose bytes do not match their checksum (flipped bits, a truncated file) is an error
  naming the array and the chunk, not a codec traceback and not garbage values;
- a chunk that is missing is an error naming the array and the chunk, not the fill value. The one
  legitimate gap is a snapshot row of ``test_logits`` / ``train_logits`` that was not evaluated
  (light snapshots); the store records which rows were (``snapshots/test_evaluated``,
  ``snapshots/train_evaluated``), and only those rows' chunks are required;
- a symbolic link anywhere inside the store (a chunk, an array, a probe group) is refused: a store
  is read from inside its own folder only;
- shapes and committed lengths are checked against each other and against bounds before any
  array is opened lazily (`check_shape`), so an edited ``zarr.json`` cannot make a reader build
  hundreds of millions of chunks.

Stores written before schema 2 still open: they have no checksums and legitimately miss chunks
that equal the fill value, so only the symlink and bounds checks apply to them.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Callable

from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from ..errors import StoreError

# The codec chain after the array-to-bytes serializer: compression, then the checksum of the
# compressed bytes (so a truncated or flipped chunk fails before it is decompressed).
COMPRESSORS = (ZstdCodec(level=0), Crc32cCodec())
ARRAY_CONFIG = {"write_empty_chunks": True}  # every chunk is on disk: a missing one is damage

MAX_CHUNKS = 1 << 18  # per array and read; a 90-epoch ImageNet run's minibatch log needs ~2000
MAX_ELEMENTS = 1 << 40  # per array (4 TB of float32)
MAX_ROWS = 1 << 36  # committed lengths (iterations, snapshots, checkpoints)


def is_chunk_key(key: str) -> bool:
    """Whether a store key names a chunk (v3 default encoding: ``<array>/c/<i>/<j>``, or
    ``<array>/c`` for a 0-d array) rather than metadata."""
    parts = key.split("/")
    return parts[-1] != "zarr.json" and "c" in parts[:-1] or parts[-1] == "c"


def chunk_array(key: str) -> tuple[str, tuple[int, ...]]:
    """(array path, chunk coordinates) of a chunk key."""
    parts = key.split("/")
    i = len(parts) - 1 - parts[::-1].index("c")
    try:
        coords = tuple(int(p) for p in parts[i + 1:])
    except ValueError:
        coords = ()
    return "/".join(parts[:i]), coords


class CheckedStore(LocalStore):
    """A LocalStore that refuses symlinks inside the store and, once `strict`, missing chunks
    and chunks whose crc32c does not match (see the module docstring).

    `allow_missing(array_path, chunk_coords)` says which missing chunks are legitimate (rows of
    logits that were never evaluated)."""

    def __init__(self, root, *, read_only: bool = True):
        super().__init__(root, read_only=read_only)
        self.strict = False
        self.allow_missing: Callable[[str, tuple[int, ...]], bool] = lambda array, coords: False
        self._safe_dirs: set[str] = set()
        self._crc: dict[str, bool] = {}  # array path -> whether its codecs end with crc32c

    @property
    def label(self) -> str:
        return str(self.root)

    def _check_links(self, key: str) -> None:
        """Refuse a key whose path under the store root passes through a symbolic link."""
        parts = key.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if i < len(parts) and sub in self._safe_dirs:
                continue
            try:
                st = os.lstat(self.root / sub)
            except (FileNotFoundError, NotADirectoryError):
                return  # missing: the caller decides what a missing key means
            if stat.S_ISLNK(st.st_mode):
                raise StoreError(f"{self.root}: {sub} is a symbolic link; refused (a run store is read only "
                                 "from inside its own folder)")
            if i < len(parts):
                self._safe_dirs.add(sub)

    def _has_crc(self, array: str) -> bool:
        if array not in self._crc:
            try:
                meta = json.loads((self.root / array / "zarr.json").read_bytes())
                codecs = meta.get("codecs") or []
                self._crc[array] = bool(codecs) and isinstance(codecs[-1], dict) and \
                    codecs[-1].get("name") == "crc32c"
            except (OSError, ValueError, AttributeError):
                self._crc[array] = False
        return self._crc[array]

    async def get(self, key, prototype=None, byte_range=None):
        self._check_links(key)
        buf = await super().get(key, prototype, byte_range)
        if not self.strict or not is_chunk_key(key):
            return buf
        array, coords = chunk_array(key)
        if buf is None:
            if self.allow_missing(array, coords):
                return None
            raise StoreError(f"{self.root}: array {array}: chunk {'.'.join(map(str, coords)) or '0'} is missing "
                             "(damaged store; rerun the run or restore the store from a copy)")
        if byte_range is None and self._has_crc(array):
            import google_crc32c
            import numpy as np

            data = buf.as_numpy_array()
            if len(data) < 4 or np.uint32(google_crc32c.value(data[:-4])).tobytes() != bytes(data[-4:]):
                raise StoreError(f"{self.root}: array {array}: chunk {'.'.join(map(str, coords)) or '0'} fails its "
                                 "crc32c checksum (damaged store; rerun the run or restore the store from a copy)")
        return buf

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        for key, _ in key_ranges:
            self._check_links(key)
        return await super().get_partial_values(prototype, key_ranges)


def check_shape(where, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], rows: int | None = None) -> None:
    """Refuse an array whose (read) size is beyond any real run: more than MAX_ELEMENTS values,
    or more than MAX_CHUNKS chunks in the part read (`rows` along the first dim when given)."""
    shape = tuple(int(s) for s in shape)
    if rows is not None and shape:
        shape = (int(rows), *shape[1:])
    if any(s < 0 for s in shape) or any(c < 1 for c in chunks):
        raise StoreError(f"{where}: array {name} has an impossible shape {shape} / chunks {chunks} (corrupted store)")
    n = math.prod(shape)
    nchunks = math.prod(-(-s // c) for s, c in zip(shape, chunks))
    if n > MAX_ELEMENTS or nchunks > MAX_CHUNKS:
        raise StoreError(f"{where}: array {name} claims shape {shape} ({nchunks} chunks); beyond any run "
                         "lrscope writes (corrupted or edited metadata)")


def is_dir_not_link(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
