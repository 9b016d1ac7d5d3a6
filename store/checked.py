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
  hundreds of millions of chunks;
- every array's metadata is checked against what the writer declares for it before any chunk
  is read (`check_metadata`, `check_probe_metadata`): dtype and byte order, fill value, chunk grid,
  chunk-key encoding, codec chain and dimension names, and no CF-encoding attribute (scale_factor,
  add_offset, missing_value, a time unit, ...) — so no edit to a ``zarr.json`` can make the
  checksummed bytes read as other numbers;
- only regular files are read (a FIFO, socket or device inside the store is refused before it is
  opened: opening a FIFO blocks for ever), no file larger than its array's chunk can be (its
  compressed-size bound) is read, and an unreadable file is a one-line error, not a traceback.

Stores written before schema 2 still open: they have no checksums and legitimately miss chunks
that equal the fill value, so only the symlink and bounds checks apply to them.
"""

from __future__ import annotations

import base64
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Callable

import numpy as np
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
MAX_META_BYTES = 64 << 20  # a zarr.json (root attributes, probe provenance: a few kB in practice)
MAX_FILE_BYTES = 4 << 30  # any chunk of an array whose metadata was not checked (none is read so)
MAX_STRING_CHUNK_BYTES = 256 << 20  # a chunk of variable-length strings (probe labels: a few bytes each)


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
        self._bound: dict[str, int] = {}  # array path -> the largest a chunk file of it can be (bytes)
        # called with (array path, its parsed zarr.json) whenever an array's metadata is read, once the
        # root attributes are known (open_store): checks it against the writer's declarations
        self.check_array_metadata: Callable[[str, dict], None] | None = None
        self._meta_seen: dict[str, bytes] = {}  # key -> the zarr.json bytes last checked

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
                meta = json.loads(self._read_small(f"{array}/zarr.json"))
                codecs = meta.get("codecs") or []
                self._crc[array] = bool(codecs) and isinstance(codecs[-1], dict) and \
                    codecs[-1].get("name") == "crc32c"
            except (OSError, ValueError, AttributeError, StoreError):
                self._crc[array] = False
        return self._crc[array]

    def register(self, array: str, metadata) -> None:
        """The checked metadata of an array (`check_metadata`): its chunks are bounded by it and
        checksummed when its codecs end with crc32c, whatever its zarr.json says now."""
        self._crc[array] = bool(metadata.codecs) and isinstance(metadata.codecs[-1], Crc32cCodec)
        self._bound[array] = chunk_bound(metadata)

    def _chunk_limit(self, array: str) -> int:
        if array not in self._bound:
            try:
                meta = json.loads(self._read_small(f"{array}/zarr.json"))
                n = math.prod(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
                size = np.dtype(meta["data_type"]).itemsize if meta["data_type"] != "string" else 0
                self._bound[array] = min(MAX_FILE_BYTES, _compressed_bound(n * size) if size else
                                         MAX_STRING_CHUNK_BYTES)
            except Exception:  # unreadable or odd metadata: the reader refuses it when it parses it
                self._bound[array] = MAX_FILE_BYTES
        return self._bound[array]

    def _read_small(self, key: str) -> bytes:
        path = self.root / key
        self._check_file(key, MAX_META_BYTES)
        return path.read_bytes()

    def _check_file(self, key: str, limit: int) -> None:
        """Refuse to open anything but a regular file no larger than `limit` (a FIFO would block
        the reader for ever, a device or a huge sparse file exhaust it). A missing key passes."""
        try:
            st = os.lstat(self.root / key)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise StoreError(f"{self.root}: {key} cannot be read ({e.strerror or type(e).__name__}; damaged store)"
                             ) from None
        if stat.S_ISDIR(st.st_mode):
            return  # read as missing (LocalStore): the caller decides what a missing key means
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{self.root}: {key} is not a regular file (a FIFO, socket or device); refused "
                             "(damaged or hostile store)")
        if st.st_size > limit:
            raise StoreError(f"{self.root}: {key} is {st.st_size} bytes, more than its array's chunks can be "
                             f"({limit}); refused (damaged or hostile store)")

    async def get(self, key, prototype=None, byte_range=None):
        self._before(key)
        try:
            buf = await super().get(key, prototype, byte_range)
        except OSError as e:  # permission denied, I/O error
            raise StoreError(f"{self.root}: {key} cannot be read ({e.strerror or type(e).__name__}; damaged or "
                             "unreadable store)") from None
        return self._after(key, buf, byte_range)

    def get_sync(self, key, *, prototype=None, byte_range=None):
        """The synchronous read (Zarr's StorePath.get_sync), with the same checks as `get`."""
        self._before(key)
        try:
            buf = super().get_sync(key, prototype=prototype, byte_range=byte_range)
        except OSError as e:
            raise StoreError(f"{self.root}: {key} cannot be read ({e.strerror or type(e).__name__}; damaged or "
                             "unreadable store)") from None
        return self._after(key, buf, byte_range)

    def _before(self, key: str) -> None:
        """Before a key is opened: no symlink on its path, a regular file within its bound."""
        self._check_links(key)
        if is_chunk_key(key):
            self._check_file(key, self._chunk_limit(chunk_array(key)[0]))
        else:
            self._check_file(key, MAX_META_BYTES)

    def _after(self, key: str, buf, byte_range):
        """What was read: array metadata checked (the hook), a chunk present and checksummed."""
        if buf is not None and self.check_array_metadata is not None and key.endswith("/zarr.json") \
                and byte_range is None:
            raw = buf.to_bytes()
            if self._meta_seen.get(key) != raw:  # each version of a zarr.json is checked once
                try:
                    meta = json.loads(raw)
                except ValueError:
                    meta = None  # Zarr's own parse says what is wrong with it
                if isinstance(meta, dict) and meta.get("node_type") == "array":
                    self.check_array_metadata(key[: -len("/zarr.json")], meta)
                self._meta_seen[key] = raw
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

            data = buf.as_numpy_array()
            if len(data) < 4 or np.uint32(google_crc32c.value(data[:-4])).tobytes() != bytes(data[-4:]):
                raise StoreError(f"{self.root}: array {array}: chunk {'.'.join(map(str, coords)) or '0'} fails its "
                                 "crc32c checksum (damaged store; rerun the run or restore the store from a copy)")
        return buf

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        for key, _ in key_ranges:
            self._check_links(key)
            self._check_file(key, self._chunk_limit(chunk_array(key)[0]) if is_chunk_key(key) else MAX_META_BYTES)
        try:
            return await super().get_partial_values(prototype, key_ranges)
        except OSError as e:
            raise StoreError(f"{self.root}: cannot be read ({e.strerror or type(e).__name__}; damaged or "
                             "unreadable store)") from None


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


# ------------------------------------------------------------------ array metadata
# Attributes through which xarray's CF decoding would rescale, mask or re-type an array's values.
# lrscope writes none of them (probe results carry `_FillValue` = NaN on float arrays only, which
# changes nothing); readers open probe results with that decoding off and refuse these anyway, so
# an edited attribute is an error rather than a silently different number.
CF_ATTRS = ("scale_factor", "add_offset", "missing_value", "_Unsigned", "dtype", "calendar", "_Encoding",
            "valid_min", "valid_max", "valid_range", "flag_values", "flag_masks", "compress")
NUMERIC_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                  "float32", "float64")
KEY_ENCODING = {"name": "default", "configuration": {"separator": "/"}}


def _compressed_bound(n: int) -> int:
    """The most bytes a chunk of `n` uncompressed bytes can take on disk: zstd's worst case
    (ZSTD_COMPRESSBOUND: n + n/256 + a frame header), the crc32c, and slack."""
    return n + (n >> 7) + 1024


def chunk_bound(metadata) -> int:
    """The largest a chunk file of an array with these (checked) metadata can be."""
    n = math.prod(int(c) for c in metadata.chunk_grid.chunk_shape)
    dt = metadata.data_type.to_native_dtype()
    if np.dtype(dt).kind in "OTU":
        return MAX_STRING_CHUNK_BYTES
    return min(MAX_FILE_BYTES, _compressed_bound(n * np.dtype(dt).itemsize))


def _codecs(metadata) -> list[dict]:
    return [c.to_dict() for c in metadata.codecs]


def numeric_codecs(dtype: np.dtype, crc: bool) -> list[dict]:
    """The codec chain lrscope writes for a numeric array: little-endian bytes, then COMPRESSORS
    (zstd, crc32c); without the crc32c for stores older than the checksums (schema 1)."""
    chain = [{"name": "bytes", "configuration": {"endian": "little"}} if np.dtype(dtype).itemsize > 1 else
             {"name": "bytes"}]
    chain += [c.to_dict() for c in COMPRESSORS]
    return chain if crc else chain[:-1]


def _fill_matches(value, want) -> bool:
    v = np.asarray(value)
    if v.dtype.kind not in "biuf" or v.shape != ():
        return False
    if isinstance(want, float) and math.isnan(want):
        return v.dtype.kind == "f" and bool(np.isnan(v))
    if v.dtype.kind == "f" and bool(np.isnan(v)):
        return False
    return bool(v == want)


def _cf_attributes(where, name: str, attrs: dict[str, Any], kind: str) -> None:
    for key in CF_ATTRS:
        if key in attrs:
            raise StoreError(f"{where}: array {name} carries the CF attribute {key!r}, which would change its "
                             "values when read; lrscope writes none (edited or foreign store)")
    units = attrs.get("units")
    if units is not None and (not isinstance(units, str) or " since " in units.lower()):
        raise StoreError(f"{where}: array {name} has units {ascii(units)[:40]}, a time encoding lrscope never "
                         "writes (edited or foreign store)")
    if "_FillValue" in attrs:
        ok = False
        if kind == "f" and isinstance(attrs["_FillValue"], str):
            try:
                raw = base64.b64decode(attrs["_FillValue"], validate=True)
                ok = len(raw) == 8 and bool(np.isnan(np.frombuffer(raw, "<f8")[0]))
            except ValueError:
                ok = False
        if not ok:
            raise StoreError(f"{where}: array {name} has a _FillValue attribute lrscope never writes (it would "
                             "mask values when read; edited or foreign store)")


def _common(where, name: str, md) -> None:
    d = md.to_dict()
    if d.get("chunk_key_encoding") != KEY_ENCODING:
        raise StoreError(f"{where}: array {name} has the chunk-key encoding {_short(d.get('chunk_key_encoding'))}, "
                         "not lrscope's (edited or foreign store)")
    if d.get("storage_transformers"):
        raise StoreError(f"{where}: array {name} has storage transformers; refused (edited or foreign store)")
    grid = d.get("chunk_grid") or {}
    if grid.get("name") != "regular":
        raise StoreError(f"{where}: array {name} has a {grid.get('name')!r} chunk grid, not lrscope's regular one "
                         "(edited or foreign store)")


def _short(value: Any) -> str:
    text = ascii(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _numeric_codecs_and_fill(where, name: str, md, codecs: list, crc: bool | None, fill) -> None:
    """A numeric array's codec chain is `numeric_codecs` of its dtype (`crc` None: with or without
    the checksum) and its fill value `fill`; else the one-line StoreError naming the array."""
    native = np.dtype(md.data_type.to_native_dtype())
    want = [numeric_codecs(native, True), numeric_codecs(native, False)] if crc is None else \
        [numeric_codecs(native, crc)]
    if codecs not in want:
        raise StoreError(f"{where}: array {name} has the codecs {_short([c.get('name') for c in codecs])} "
                         f"{_endian(codecs)}, not lrscope's {[c['name'] for c in want[0]]} little-endian (edited "
                         "or foreign store)")
    if not _fill_matches(md.fill_value, fill):
        raise StoreError(f"{where}: array {name} has fill value {_short(md.fill_value)}, expected {fill!r} "
                         "(edited metadata)")


def check_metadata(where, name: str, arr, *, dtypes: tuple[str, ...], fill, dims: tuple[str, ...],
                   chunks: tuple[int, ...], crc: bool | None) -> None:
    """An array of the run (not a probe result) against what the writer declares for it: one of
    `dtypes`, fill value `fill`, dimension names `dims`, chunk shape `chunks`, the codec chain
    `numeric_codecs` (`crc` None: with or without the checksum, schema-1 stores), the default
    chunk-key encoding, no CF attribute. The one-line StoreError names the array."""
    md = getattr(arr, "metadata", arr)  # an Array or its metadata
    _common(where, name, md)
    dtype = str(md.to_dict().get("data_type"))
    if dtype not in dtypes:
        raise StoreError(f"{where}: array {name} has dtype {_short(dtype)}, expected {' or '.join(dtypes)} "
                         "(edited or corrupted metadata)")
    _numeric_codecs_and_fill(where, name, md, _codecs(md), crc, fill)
    if tuple(md.dimension_names or ()) != tuple(dims):
        raise StoreError(f"{where}: array {name} has dimensions {_short(md.dimension_names)}, expected "
                         f"{_short(tuple(dims))} (edited metadata)")
    if tuple(md.chunk_grid.chunk_shape) != tuple(chunks):
        raise StoreError(f"{where}: array {name} has chunks {_short(tuple(md.chunk_grid.chunk_shape))}, expected "
                         f"{tuple(chunks)} for its shape {tuple(md.shape)} (edited metadata)")
    _cf_attributes(where, name, dict(md.attributes), np.dtype(md.data_type.to_native_dtype()).kind)


def _endian(codecs: list[dict]) -> str:
    for c in codecs:
        if c.get("name") == "bytes":
            return f"({(c.get('configuration') or {}).get('endian', 'no')} endian)"
    return ""


def guessed_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """The chunk shape Zarr chooses when none is given (what xarray writes probe results with,
    and the writer's arrays of zero size)."""
    from .zarr_internals import normalize_chunks

    return tuple(normalize_chunks(None, tuple(shape), max(1, itemsize)))


def check_probe_metadata(where, name: str, arr, *, crc: bool | None) -> None:
    """An array of a probe result against what `store/probes.py:write_probe` writes: a numeric
    dtype with the codecs `numeric_codecs` and the fill value xarray gives it (NaN for floats, 0,
    False), or variable-length UTF-8 text (vlen-utf8 then zstd, "" fill); the chunk shape Zarr
    chooses for its shape (one chunk for all but large arrays); dimension names; no CF attribute
    but the NaN `_FillValue` xarray writes on float arrays."""
    md = getattr(arr, "metadata", arr)  # an Array or its metadata
    _common(where, name, md)
    dtype = str(md.to_dict().get("data_type"))
    codecs = _codecs(md)
    chunks = tuple(md.chunk_grid.chunk_shape)
    if dtype == "string":
        zstd = [c.to_dict() for c in COMPRESSORS]
        if codecs not in ([{"name": "vlen-utf8", "configuration": {}}, zstd[0]],
                          [{"name": "vlen-utf8", "configuration": {}}, *zstd]):
            raise StoreError(f"{where}: array {name} has the codecs {_short([c.get('name') for c in codecs])}, not "
                             "lrscope's for text (vlen-utf8, zstd; edited or foreign store)")
        if md.fill_value not in ("", None):
            raise StoreError(f"{where}: array {name} has fill value {_short(md.fill_value)}, expected '' "
                             "(edited metadata)")
        if len(chunks) != len(md.shape) or any(c < 1 or c > max(1, s) for c, s in zip(chunks, md.shape)):
            raise StoreError(f"{where}: array {name} has chunks {_short(chunks)} for its shape {tuple(md.shape)} "
                             "(edited metadata)")
        kind = "T"
    else:
        if dtype not in NUMERIC_DTYPES:
            raise StoreError(f"{where}: array {name} has dtype {_short(dtype)}, not one lrscope writes "
                             "(edited or foreign store)")
        native = np.dtype(md.data_type.to_native_dtype())
        kind = native.kind
        _numeric_codecs_and_fill(where, name, md, codecs, crc,
                                 float("nan") if kind == "f" else False if kind == "b" else 0)
        if chunks != guessed_chunks(tuple(md.shape), native.itemsize) and chunks != tuple(md.shape):
            raise StoreError(f"{where}: array {name} has chunks {_short(chunks)}, not those written for its shape "
                             f"{tuple(md.shape)} (edited metadata)")
    dims = md.dimension_names
    if (dims is None and md.ndim) or (dims is not None and (len(dims) != md.ndim or
                                                            not all(isinstance(x, str) for x in dims))):
        raise StoreError(f"{where}: array {name} has no valid dimension names (edited metadata)")
    _cf_attributes(where, name, dict(md.attributes), kind)
