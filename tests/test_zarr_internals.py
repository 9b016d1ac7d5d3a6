"""Every non-public Zarr/xarray name lrscope uses (store/zarr_internals.py, the one module that
imports them) still exists and does what lrscope relies on: a release that moves or changes one
fails here, by name, not deep inside a read."""

import asyncio

import numpy as np
import zarr

from lrscope.store import zarr_internals as Z


def test_sync_runs_coroutines_on_zarrs_loop():
    async def two():
        return await asyncio.gather(asyncio.sleep(0, 1), asyncio.sleep(0, 2))

    assert Z.sync(two()) == [1, 2]


def test_array_from_checked_metadata_reads_the_chunks(tmp_path):
    a = zarr.create_array(str(tmp_path / "a"), shape=(6,), chunks=(4,), dtype="int32")
    a[:] = np.arange(6)
    meta = Z.ArrayV3Metadata.from_dict(a.metadata.to_dict())
    b = Z.array_from_metadata(meta.update_shape((4,)), a.store, "")  # a shorter committed length
    assert isinstance(b, zarr.Array) and b.shape == (4,)
    np.testing.assert_array_equal(b[:], np.arange(4))
    np.testing.assert_array_equal(Z.sync(b.async_array.getitem(Ellipsis)), np.arange(4))


def test_copying_keys_with_the_default_buffer_prototype():
    src, dst = zarr.storage.MemoryStore(), zarr.storage.MemoryStore()
    zarr.create_array(src, name="x", shape=(3,), dtype="f4")[:] = [1, 2, 3]
    proto = Z.default_buffer_prototype()

    async def copy():
        async for k in src.list():
            await dst.set(k, await src.get(k, prototype=proto))

    Z.sync(copy())
    np.testing.assert_array_equal(zarr.open_array(dst, path="x")[:], [1, 2, 3])


def test_chunk_guess_and_dtype_promotion():
    chunks = tuple(Z.normalize_chunks(None, (1000, 10), 4))
    assert len(chunks) == 2 and all(isinstance(c, int) and c >= 1 for c in chunks)
    dtype, fill = Z.maybe_promote(np.dtype("int64"))
    assert dtype == np.float64 and np.isnan(fill)
    dtype, fill = Z.maybe_promote(np.dtype("float32"))
    assert dtype == np.float32 and np.isnan(fill)
