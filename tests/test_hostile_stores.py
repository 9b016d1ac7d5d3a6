"""Damaged and hostile run stores (issue #16, items 4 and 5): within the committed lengths a
missing, truncated or corrupted chunk is an error naming the array, never the fill value or
garbage; edited metadata is refused before anything is allocated; symlinks inside a store are
refused. Every case also checks that reading changed nothing on disk.

One small finished, probed run is trained per module; each case works on a copy of it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import lrscope
from lrscope.errors import LrscopeError, StoreError
from lrscope.store import schema as S
from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run
from lrscope.train.restore import load_model


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile")
    cfg = RunConfig(dataset="parity", model="fcn", widths=[8], lr=0.1, max_steps=30, checkpoint_every=10,
                    snapshot_every=10, stop="max-steps", probe_size=40, batch_size=50,
                    data_options={"n_train": 200, "n_test": 200})
    r = train_run(cfg, out, progress=False)
    from lrscope.probe.runner import compute_run

    compute_run(r.path, ["accuracy", "loss_ratio"])
    return r.path


def tree(path: Path) -> dict[str, str]:
    """Every entry under `path` (links not followed): kind and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(path))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file() and p.stat().st_size > 64 << 20:  # a sparse hostile chunk: not read whole
                out[rel] = f"size:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            elif p.is_file() and os.access(p, os.R_OK):
                out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
            elif not p.is_dir():  # a FIFO, socket, or a file without read permission
                out[rel] = f"special:{p.lstat().st_mode:o}"
            else:
                out[rel] = "dir"
    return out


def read_everything(path: Path) -> None:
    """What the readers, load_model and the probes read: every committed array, every
    checkpoint's parameters, every probe result."""
    ds = lrscope.open_run(path)
    ds.load()
    for k in range(ds.sizes["checkpoint"]):
        load_model(ds, checkpoint=k)


def chunk(store: Path, array: str) -> Path:
    """The first chunk file of an array (all our test arrays' chunk 0 holds committed rows)."""
    files = sorted(p for p in (store / array / "c").rglob("*") if p.is_file())
    assert files, array
    return files[0]


def _flip(p: Path, at: int = 8, n: int = 16) -> None:
    b = bytearray(p.read_bytes())
    for i in range(min(n, len(b))):
        b[(at + i) % len(b)] ^= 0xA5
    p.write_bytes(bytes(b))


def _truncate(p: Path) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _zeros(p: Path) -> None:
    p.write_bytes(bytes(p.stat().st_size))


def _delete(p: Path) -> None:
    p.unlink()


CHUNK_ARRAYS = [
    "log/loss", "log/accuracy", "log/bc_count", "log/grad_norm", "log/batch_index", "log/batch_logits",
    "snapshots/iteration", "snapshots/probe_features", "snapshots/probe_logits", "snapshots/test_logits",
    "snapshots/test_evaluated", "checkpoints/iteration", "checkpoints/params/features.1.weight",
    "checkpoints/params/head.weight", "data/train/y", "data/test/b", "data/probe/inputs", "data/regions",
    "probes/accuracy/unbiased_accuracy",
]
DAMAGE = {"missing": _delete, "truncated": _truncate, "flipped": _flip, "empty": _empty, "zeroed": _zeros}


@pytest.mark.parametrize("how", list(DAMAGE))
@pytest.mark.parametrize("array", CHUNK_ARRAYS)
def test_damaged_chunk_is_an_error_naming_the_array(base, tmp_path, array, how):
    if not (base / array / "zarr.json").exists():  # layer names: see the fixture's model
        pytest.skip(f"{array} not in this store")
    store = tmp_path / base.name
    shutil.copytree(base, store)
    DAMAGE[how](chunk(store, array))
    before = tree(tmp_path)
    with pytest.raises(StoreError) as e:
        read_everything(store)
    assert array in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("array", ["log/loss", "checkpoints/params/head.weight", "data/test/y",
                                   "probes/accuracy/unbiased_accuracy"])
def test_symlinked_chunk_is_refused(base, tmp_path, array):
    store = tmp_path / "s" / base.name
    shutil.copytree(base, store)
    c = chunk(store, array)
    outside = tmp_path / "outside-chunk"
    shutil.copy(c, outside)  # the very same bytes: only where they live is wrong
    c.unlink()
    os.symlink(outside, c)
    before = tree(tmp_path)
    with pytest.raises(StoreError, match="symbolic link"):
        read_everything(store)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("what", ["probes/accuracy", "log/loss", "data/test", "snapshots"])
def test_symlinked_group_or_array_is_refused(base, tmp_path, what):
    store = tmp_path / "s" / base.name
    shutil.copytree(base, store)
    outside = tmp_path / "outside"
    shutil.move(store / what, outside)
    os.symlink(outside, store / what)
    before = tree(tmp_path)
    with pytest.raises(StoreError, match="symbolic link"):
        read_everything(store)
    assert tree(tmp_path) == before


def test_light_snapshot_rows_may_be_missing_but_evaluated_ones_may_not(base, tmp_path):
    """test_logits rows of light snapshots were never written: they read as NaN; an evaluated
    row's chunk is required."""
    store = tmp_path / base.name
    shutil.copytree(base, store)
    ds = lrscope.open_run(store)
    ev = ds.test_evaluated.values
    assert ev[0] and not ev.all()  # snapshot 0 is full, the early log-spaced ones light
    light = int(np.flatnonzero(~ev)[0])
    assert np.isnan(ds.test_logits.isel(snapshot=light).values).all()
    assert not list((store / "snapshots/test_logits/c" / str(light)).glob("*")) if \
        (store / "snapshots/test_logits/c" / str(light)).exists() else True
    full = int(np.flatnonzero(ev)[-1])
    for f in (store / "snapshots/test_logits/c" / str(full)).rglob("*"):
        if f.is_file():
            f.unlink()
    with pytest.raises(StoreError, match=f"snapshots/test_logits: chunk {full}"):
        lrscope.open_run(store).test_logits.load()


# ------------------------------------------------------------------ edited metadata
def _edit_json(store: Path, rel: str, fn) -> None:
    p = store / rel
    meta = json.loads(p.read_text())
    fn(meta)
    p.write_text(json.dumps(meta))


def _root_attr(key, value):
    def fn(meta):
        meta["attributes"][key] = value
    return fn


def _committed(**kw):
    def fn(meta):
        meta["attributes"]["committed"].update(kw)
    return fn


def _shape(shape):
    def fn(meta):
        meta["shape"] = shape
    return fn


def _chunks(chunks):
    def fn(meta):
        meta["chunk_grid"]["configuration"]["chunk_shape"] = chunks
    return fn


METADATA = {
    "huge-log-shape-and-committed": [("log/loss/zarr.json", _shape([10**12])),
                                     ("zarr.json", _committed(iteration=10**12))],
    "huge-log-shape-and-committed-and-max-steps": [
        ("log/loss/zarr.json", _shape([10**12])), ("log/batch_logits/zarr.json", _shape([10**12, 50, 2])),
        ("zarr.json", _committed(iteration=10**12)),
        ("zarr.json", lambda m: m["attributes"]["config"].update(max_steps=10**12))],
    "huge-label-shape": [("data/test/y/zarr.json", _shape([10**13]))],
    "huge-probe-input-shape": [("data/probe/inputs/zarr.json", _shape([10**9, 10**6]))],
    "tiny-chunks": [("log/loss/zarr.json", _chunks([1])), ("log/loss/zarr.json", _shape([10**7])),
                    ("zarr.json", _committed(iteration=10**7)),
                    ("zarr.json", lambda m: m["attributes"]["config"].update(max_steps=10**8))],
    "zero-chunks": [("log/loss/zarr.json", _chunks([0]))],
    "negative-shape": [("log/loss/zarr.json", _shape([-5]))],
    "committed-beyond-array": [("zarr.json", _committed(iteration=29, snapshot=30))],
    "committed-negative": [("zarr.json", _committed(iteration=-1))],
    "committed-string": [("zarr.json", _committed(iteration="30"))],
    "committed-float": [("zarr.json", _committed(snapshot=2.5))],
    "committed-bool": [("zarr.json", _committed(checkpoint=True))],
    "committed-missing-key": [("zarr.json", lambda m: m["attributes"]["committed"].pop("snapshot"))],
    "committed-extra-key": [("zarr.json", _committed(epoch=3))],
    "committed-not-a-dict": [("zarr.json", _root_attr("committed", [30, 8, 4]))],
    "committed-beyond-max-steps": [("zarr.json", _committed(iteration=31))],
    "more-snapshots-than-iterations": [("zarr.json", _committed(iteration=3, snapshot=9))],
    "more-checkpoints-than-rows": [("zarr.json", _committed(checkpoint=9))],
    "config-string": [("zarr.json", _root_attr("config", "dataset=parity"))],
    "config-list": [("zarr.json", _root_attr("config", ["parity"]))],
    "config-without-model": [("zarr.json", lambda m: m["attributes"]["config"].pop("model"))],
    "status-pwned": [("zarr.json", _root_attr("status", "pwned"))],
    "status-number": [("zarr.json", _root_attr("status", 1))],
    "schema-string": [("zarr.json", _root_attr("schema_version", "2"))],
    "schema-zero": [("zarr.json", _root_attr("schema_version", 0))],
    "schema-newer": [("zarr.json", _root_attr("schema_version", 99))],
    "schema-bool": [("zarr.json", _root_attr("schema_version", True))],
    "not-a-run": [("zarr.json", _root_attr("lrscope", "probe"))],
    "model-info-string": [("zarr.json", _root_attr("model_info", "fcn"))],
    "timings-list": [("zarr.json", _root_attr("timings", [1, 2]))],
    "pickle-codec": [("log/loss/zarr.json", lambda m: m["codecs"].insert(1, {"name": "pickle"}))],
    "object-dtype": [("log/loss/zarr.json", lambda m: m.update(data_type="object"))],
    "no-dimension-names": [("log/loss/zarr.json", lambda m: m.pop("dimension_names"))],
    "param-shape-mismatch": [("checkpoints/params/head.weight/zarr.json", _shape([4, 3, 8]))],
}


def _garbage_json(rel):
    def do(store):
        (store / rel).write_text("{not json")
    return do


def _missing(rel):
    def do(store):
        (store / rel).unlink()
    return do


FILES = {
    "root-zarr-json-garbage": _garbage_json("zarr.json"),
    "array-zarr-json-garbage": _garbage_json("log/loss/zarr.json"),
    "array-zarr-json-missing": _missing("log/loss/zarr.json"),
    "params-zarr-json-missing": _missing("checkpoints/params/head.weight/zarr.json"),
    "labels-zarr-json-missing": _missing("data/test/y/zarr.json"),
    "root-zarr-json-missing": _missing("zarr.json"),
}


@pytest.mark.parametrize("case", list(METADATA) + list(FILES))
def test_hostile_metadata_is_refused(base, tmp_path, case):
    store = tmp_path / base.name
    shutil.copytree(base, store)
    if case in METADATA:
        for rel, fn in METADATA[case]:
            _edit_json(store, rel, fn)
    else:
        FILES[case](store)
    before = tree(tmp_path)
    with pytest.raises(LrscopeError) as e:
        read_everything(store)
    assert "\n" not in str(e.value)
    assert tree(tmp_path) == before


def test_the_table_is_big_enough():
    n = len(CHUNK_ARRAYS) * len(DAMAGE) + 4 + 4 + 1 + len(METADATA) + len(FILES)
    assert n >= 50, n


def test_schema_1_store_still_opens(base, tmp_path):
    """A store written before checksums (schema 1): no crc32c, chunks equal to the fill value not
    written. It opens and reads; only the symlink and bounds checks apply."""
    store = tmp_path / base.name
    shutil.copytree(base, store)
    _edit_json(store, "zarr.json", _root_attr("schema_version", 1))
    for arr in (S.A_TEST_EVALUATED, S.A_TRAIN_EVALUATED):
        shutil.rmtree(store / "snapshots" / arr)
    light = np.flatnonzero(~lrscope.open_run(base).test_evaluated.values)
    ds = lrscope.open_run(store)
    assert np.isnan(ds.test_logits.isel(snapshot=int(light[0])).values).all()
    read_everything(store)


# ------------------------------------------------------------------ round 3 (issue #26)
# Array metadata against the writer's declarations: every edit below leaves the checksummed bytes
# as they are and changes only what they would be read as (dtype, byte order, chunk grid, key
# encoding, codecs, fill value, dimension names, CF attributes). Every reader refuses each with a
# one-line StoreError naming the array: open_run, open_sweep, load_model and `lrprobe ls`.
def _set(**kw):
    def fn(meta):
        meta.update(kw)
    return fn


def _endian(value):
    def fn(meta):
        meta["codecs"][0]["configuration"] = {"endian": value}
    return fn


def _codec(i, codec):
    def fn(meta):
        meta["codecs"][i] = codec
    return fn


def _insert_codec(i, codec):
    def fn(meta):
        meta["codecs"].insert(i, codec)
    return fn


def _attr(**kw):
    def fn(meta):
        meta.setdefault("attributes", {}).update(kw)
    return fn


def _key_encoding(name, sep):
    def fn(meta):
        meta["chunk_key_encoding"] = {"name": name, "configuration": {"separator": sep}}
    return fn


ACC = "probes/accuracy/unbiased_accuracy/zarr.json"
GACC = "probes/accuracy/group_accuracy/zarr.json"
ZERO_F8 = "AAAAAAAAAAA="  # xarray's base64 _FillValue encoding of 0.0
METADATA_R3 = {
    # dtype and byte order (same item size: the bytes would decode as other numbers)
    "log-loss-int32": [("log/loss/zarr.json", _set(data_type="int32"))],
    "log-loss-float64": [("log/loss/zarr.json", _set(data_type="float64"))],
    "log-loss-bool": [("log/loss/zarr.json", _set(data_type="bool", fill_value=False))],
    "log-loss-big-endian": [("log/loss/zarr.json", _endian("big"))],
    "log-count-float32": [("log/bc_count/zarr.json", _set(data_type="float32", fill_value=0.0))],
    "batch-index-uint32": [("log/batch_index/zarr.json", _set(data_type="uint32", fill_value=0))],
    "batch-logits-big-endian": [("log/batch_logits/zarr.json", _endian("big"))],
    "test-logits-int32": [("snapshots/test_logits/zarr.json", _set(data_type="int32", fill_value=0))],
    "probe-features-big-endian": [("snapshots/probe_features/zarr.json", _endian("big"))],
    "snapshot-iteration-float64": [("snapshots/iteration/zarr.json", _set(data_type="float64", fill_value=0.0))],
    "checkpoint-iteration-uint64": [("checkpoints/iteration/zarr.json", _set(data_type="uint64"))],
    "labels-float64": [("data/test/y/zarr.json", _set(data_type="float64", fill_value=0.0))],
    "labels-big-endian": [("data/train/b/zarr.json", _endian("big"))],
    "bias-conflicting-uint8": [("data/test/bias_conflicting/zarr.json", _set(data_type="uint8", fill_value=0))],
    "probe-inputs-int32": [("data/probe/inputs/zarr.json", _set(data_type="int32", fill_value=0))],
    "param-int32": [("checkpoints/params/head.weight/zarr.json", _set(data_type="int32", fill_value=0))],
    "param-big-endian": [("checkpoints/params/head.weight/zarr.json", _endian("big"))],
    "probe-var-int32": [(ACC, _set(data_type="int32", fill_value=0))],
    "probe-var-big-endian": [(ACC, _endian("big"))],
    "probe-var-float64": [(ACC, _set(data_type="float64"))],
    # chunk grid (same number of values per chunk: reshaped, not failing) and chunk-key encoding
    "probe-features-chunks-swapped": [("snapshots/probe_features/zarr.json", _chunks([1, 8, 40]))],
    "batch-logits-chunks-swapped": [("log/batch_logits/zarr.json", _chunks([256, 2, 50]))],
    "param-chunks-swapped": [("checkpoints/params/head.weight/zarr.json", _chunks([1, 8, 2]))],
    "log-loss-chunks-smaller": [("log/loss/zarr.json", _chunks([16]))],
    "probe-var-chunks-swapped": [(GACC, _chunks([8, 4]))],
    "log-loss-v2-key-encoding": [("log/loss/zarr.json", _key_encoding("v2", "."))],
    "log-loss-dot-separator": [("log/loss/zarr.json", _key_encoding("default", "."))],
    "probe-var-v2-key-encoding": [(ACC, _key_encoding("v2", "/"))],
    # codecs
    "log-loss-gzip": [("log/loss/zarr.json", _codec(1, {"name": "gzip", "configuration": {"level": 1}}))],
    "log-loss-no-crc": [("log/loss/zarr.json", lambda m: m["codecs"].pop())],
    "log-loss-zstd-level-9": [("log/loss/zarr.json", _codec(1, {"name": "zstd", "configuration":
                                                                 {"level": 9, "checksum": False}}))],
    "batch-logits-transpose": [("log/batch_logits/zarr.json", _insert_codec(0, {
        "name": "transpose", "configuration": {"order": [0, 2, 1]}}))],
    "test-logits-unknown-codec": [("snapshots/test_logits/zarr.json", _insert_codec(1, {"name": "lrscope-nope"}))],
    "probe-var-unknown-codec": [(ACC, _insert_codec(1, {"name": "lrscope-nope"}))],
    "probe-var-gzip": [(ACC, _codec(1, {"name": "gzip", "configuration": {"level": 1}}))],
    "probe-var-no-crc": [(ACC, lambda m: m["codecs"].pop())],
    "storage-transformer": [("log/loss/zarr.json", _set(storage_transformers=[{"name": "nope"}]))],
    # fill value (what a legitimately absent chunk reads as)
    "test-logits-fill-0": [("snapshots/test_logits/zarr.json", _set(fill_value=0.0))],
    "batch-index-fill-7": [("log/batch_index/zarr.json", _set(fill_value=7))],
    "evaluated-fill-true": [("snapshots/test_evaluated/zarr.json", _set(fill_value=True))],
    "probe-var-fill-0": [(ACC, _set(fill_value=0.0))],
    # dimension names
    "log-loss-dims-renamed": [("log/loss/zarr.json", _set(dimension_names=["snapshot"]))],
    "test-logits-dims-swapped": [("snapshots/test_logits/zarr.json",
                                  _set(dimension_names=["snapshot", "class", "test_sample"]))],
    "probe-var-dims-missing": [(ACC, lambda m: m.pop("dimension_names"))],
    # CF attributes xarray would apply when decoding (probe results are read through xarray)
    "probe-var-scale-factor": [(ACC, _attr(scale_factor=2.0))],
    "probe-var-add-offset": [(ACC, _attr(add_offset=1.0))],
    "probe-var-units-days-since": [(ACC, _attr(units="days since 2000-01-01"))],
    "probe-var-missing-value": [(ACC, _attr(missing_value=0.5))],
    "probe-var-fillvalue-0": [(ACC, _attr(_FillValue=ZERO_F8))],
    "probe-int-fillvalue": [("probes/accuracy/group/zarr.json", _attr(_FillValue=ZERO_F8))],
    "probe-var-unsigned": [("probes/accuracy/group/zarr.json", _attr(_Unsigned="true"))],
    "probe-var-dtype-bool": [("probes/accuracy/group/zarr.json", _attr(dtype="bool"))],
    "probe-var-calendar": [(ACC, _attr(units="hours since 1970-01-01", calendar="noleap"))],
    "log-loss-scale-factor": [("log/loss/zarr.json", _attr(scale_factor=2.0))],
    "test-logits-add-offset": [("snapshots/test_logits/zarr.json", _attr(add_offset=1.0))],
}


def _fifo(rel):
    def do(store):
        p = store / rel
        p.unlink()
        os.mkfifo(p)
    return do


def _sparse(rel, size):
    def do(store):
        with open(store / rel, "r+b") as f:
            f.truncate(size)
    return do


def _socket(rel):
    def do(store):
        import socket

        p = store / rel
        p.unlink()
        s = socket.socket(socket.AF_UNIX)
        cwd = os.getcwd()
        os.chdir(p.parent)  # a relative address: the full path is longer than a socket address holds
        try:
            s.bind(p.name)
        finally:
            os.chdir(cwd)
            s.close()
    return do


def _unreadable(rel):
    def do(store):
        if os.geteuid() == 0:
            pytest.skip("root reads a file without read permission")
        os.chmod(store / rel, 0)
    return do


def _file_in_place_of(rel):
    def do(store):
        shutil.rmtree(store / rel)
        (store / rel).write_bytes(b"x")
    return do


def _first_chunk(array):
    def rel(store):
        return str(chunk(store, array).relative_to(store))
    return rel


def _on_chunk(array, make):
    def do(store):
        make(_first_chunk(array)(store))(store)
    return do


FILES_R3 = {
    # not regular files: opening a FIFO blocks for ever; a socket or device is no chunk
    "fifo-chunk-log": _on_chunk("log/loss", _fifo),
    "fifo-chunk-test-logits": _on_chunk("snapshots/test_logits", _fifo),
    "fifo-chunk-probe-var": _on_chunk("probes/accuracy/unbiased_accuracy", _fifo),
    "fifo-chunk-param": _on_chunk("checkpoints/params/head.weight", _fifo),
    "fifo-array-zarr-json": _fifo("log/loss/zarr.json"),
    "fifo-root-zarr-json": _fifo("zarr.json"),
    "socket-chunk": _on_chunk("log/loss", _socket),
    # larger than any chunk of the array can be (sparse: nothing is allocated on disk)
    "sparse-30GB-chunk": _on_chunk("log/loss", lambda rel: _sparse(rel, 30 << 30)),
    "sparse-chunk-probe-features": _on_chunk("snapshots/probe_features", lambda rel: _sparse(rel, 1 << 20)),
    "sparse-chunk-param": _on_chunk("checkpoints/params/head.weight", lambda rel: _sparse(rel, 1 << 20)),
    "sparse-chunk-probe-var": _on_chunk("probes/accuracy/unbiased_accuracy", lambda rel: _sparse(rel, 1 << 20)),
    "sparse-array-zarr-json": _sparse("log/loss/zarr.json", 1 << 30),
    # unreadable
    "unreadable-chunk": _on_chunk("log/loss", _unreadable),
    "unreadable-zarr-json": _unreadable("snapshots/test_logits/zarr.json"),
    # what hides probe results without an error
    "file-in-place-of-probes": _file_in_place_of("probes"),
    "file-in-place-of-a-probe": _file_in_place_of("probes/accuracy"),
    "probes-zarr-json-missing": _missing("probes/zarr.json"),
    "file-in-place-of-an-array": _file_in_place_of("log/loss"),
    # a result written before results listed their arrays: a variable copied into another probe's
    # group, or under a name of the run's, would replace the other in the merge
    "probe-var-in-two-probes-unlisted": lambda s: (
        _unlist(s, "loss_ratio"), shutil.copytree(s / "probes/accuracy/unbiased_accuracy",
                                                  s / "probes/loss_ratio/unbiased_accuracy")),
    "probe-var-shadows-run-var-unlisted": lambda s: (
        _unlist(s, "accuracy"),
        shutil.copytree(s / "probes/accuracy/unbiased_accuracy", s / "probes/accuracy/accuracy")),
    # the list of a result's arrays
    "probe-listed-array-missing": lambda s: shutil.rmtree(s / "probes/accuracy/unbiased_accuracy"),
    "probe-array-list-not-a-list": lambda s: _edit_json(
        s, "probes/accuracy/zarr.json", lambda m: m["attributes"].update(lrscope_arrays="unbiased_accuracy")),
    "probe-array-list-names-more": lambda s: _edit_json(
        s, "probes/accuracy/zarr.json", lambda m: m["attributes"]["lrscope_arrays"].append("nope")),
}


def _unlist(store: Path, probe: str) -> None:
    _edit_json(store, f"probes/{probe}/zarr.json", lambda m: m["attributes"].pop("lrscope_arrays"))


def _every_reader(store: Path, tmp: Path) -> list[str]:
    """Each reader on `store`: what it raised, or 'read' when it returned without an error (every
    reader must refuse). `lrprobe ls` must exit with code 2 and one line."""
    from click.testing import CliRunner

    from lrscope.cli.probe import main as lrprobe

    got = []
    for name, fn in (("open_run", lambda: read_everything(store)),
                     ("open_sweep", lambda: lrscope.open_sweep([store]).load()),
                     ("load_model", lambda: load_model(store))):
        try:
            fn()
            got.append(f"{name}: read")
        except LrscopeError as e:
            assert "\n" not in str(e) and str(e).strip(), (name, str(e))
            got.append(f"{name}: {type(e).__name__}")
    res = CliRunner().invoke(lrprobe, ["ls", str(store)])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    ok = res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: ")
    got.append("ls: refused" if ok else f"ls: exit {res.exit_code} {res.output[-300:]!r}")
    return got


@pytest.fixture
def no_hang():
    """A reader that blocks (a FIFO opened for reading) fails the test instead of hanging it."""
    import signal

    def alarm(*_):
        raise TimeoutError("a reader blocked")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _must_refuse(case: str) -> set[str]:
    """The readers that read what a case damaged (each must refuse it; the others may return, as
    long as they raise nothing but an LrscopeError): metadata is checked on open by open_run,
    open_sweep and `lrprobe ls`; chunks are read by open_run's load and open_sweep's (ls reads
    only the probes' headline values); load_model reads the root, the config and the parameters."""
    param = "param" in case
    chunk = case.startswith(("fifo-chunk", "sparse-chunk", "sparse-30GB", "socket-chunk", "unreadable-chunk"))
    if param:  # load_model(store) reads the last checkpoint; open_run's read_everything every one
        return {"open_run"} if chunk else {"open_run", "load_model"}
    if chunk and "probe-var" not in case:
        return {"open_run", "open_sweep"}
    return {"open_run", "open_sweep", "ls"} | ({"load_model"} if "root" in case else set())


@pytest.mark.parametrize("case", list(METADATA_R3) + list(FILES_R3))
def test_metadata_and_files_against_the_schema(base, tmp_path, case, no_hang):
    store = tmp_path / base.name
    shutil.copytree(base, store)
    if case in METADATA_R3:
        for rel, fn in METADATA_R3[case]:
            _edit_json(store, rel, fn)
    else:
        FILES_R3[case](store)
    before = tree(tmp_path)
    got = _every_reader(store, tmp_path)
    read = {g.split(":")[0] for g in got if g.endswith(": read") or g.startswith("ls: exit 0")}
    assert not read & _must_refuse(case), got
    assert not [g for g in got if g.startswith("ls: exit") and not g.startswith("ls: exit 0")], got
    assert tree(tmp_path) == before


def _copy_array(src, dst):
    def do(store):
        shutil.copytree(store / src, store / dst)
    return do


def _write(rel, data=b"x"):
    def do(store):
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_bytes(data)
    return do


# What lrscope does not write inside a run's groups is ignored by every reader (never merged in):
# each case reads exactly the numbers of the untouched store. Probe results, which declare no
# list of arrays, keep an extra array under a new name (it changes no number the probe wrote).
IGNORED = {
    "extra-array-in-log": _copy_array("log/loss", "log/loss2"),
    "extra-array-in-snapshots": _copy_array("snapshots/test_logits", "snapshots/test_logits_copy"),
    "extra-array-in-data": _copy_array("data/test/y", "data/test/y2"),
    "extra-array-in-data-root": _copy_array("data/regions", "data/masks"),
    "extra-group-at-root": _copy_array("log", "log2"),
    "extra-array-at-root": _copy_array("log/loss", "loss"),
    "summary-array-in-a-full-store": _copy_array("log/loss", "log/batch_loss"),
    "file-in-log": _write("log/notes.txt"),
    "file-in-an-array": _write("log/loss/README"),
    "file-at-root": _write("notes.txt"),
    "dotfile-in-probes": _write("probes/.DS_Store"),
    "incomplete-probe-group": lambda s: (shutil.copytree(s / "probes/accuracy", s / "probes/extra"),
                                         _edit_json(s, "probes/extra/zarr.json",
                                                    lambda m: m["attributes"].update(complete=0))),
    "probe-units-days": lambda s: _edit_json(s, ACC, _attr(units="days")),
    # arrays a probe result does not list: never merged, whatever their name
    "probe-var-copied-into-another-probe": _copy_array("probes/accuracy/unbiased_accuracy",
                                                       "probes/loss_ratio/unbiased_accuracy"),
    "probe-var-copied-under-a-run-name": _copy_array("probes/accuracy/unbiased_accuracy", "probes/accuracy/accuracy"),
    "probe-var-copied-under-a-new-name": _copy_array("probes/accuracy/unbiased_accuracy", "probes/accuracy/extra"),
}


def _values(ds) -> dict:
    return {k: (v.dims, np.asarray(v.values).tobytes() if v.dtype.kind != "O" else list(v.values.ravel()))
            for k, v in ds.variables.items()}


@pytest.mark.parametrize("case", list(IGNORED))
def test_what_lrscope_does_not_write_is_ignored(base, tmp_path, case):
    store = tmp_path / base.name
    shutil.copytree(base, store)
    IGNORED[case](store)
    want = _values(lrscope.open_run(base).load())
    assert _values(lrscope.open_run(store).load()) == want
    sw = lrscope.open_sweep([store]).load()
    assert set(sw.data_vars) == set(lrscope.open_sweep([base]).data_vars)
    read_everything(store)


def test_writer_and_declarations_agree(base, tmp_path):
    """Every array a reader reads, in stores of both minibatch-record policies (the full logits
    and the summary), is declared in schema.array_spec and passes the metadata check; every
    declared array of the policy is there. Probe results of every probe pass theirs."""
    import zarr

    from lrscope.probe.runner import compute_run
    from lrscope.store.reader import check_node, open_store, read_probes

    cfg = RunConfig(dataset="parity", model="fcn", widths=[8], lr=0.1, max_steps=12, checkpoint_every=6,
                    snapshot_every=6, stop="max-steps", probe_size=40, batch_size=50, log_logits="summary",
                    data_options={"n_train": 200, "n_test": 200})
    summary = train_run(cfg, tmp_path / "s", progress=False).path
    full = tmp_path / "f" / base.name
    shutil.copytree(base, full)
    from lrscope.probe.registry import PROBES

    compute_run(full, list(PROBES))  # every probe, the specialist ones too: text, bool, int and float results
    for path in (full, summary):
        root = open_store(path)
        attrs = root.attrs.asdict()
        seen = set()
        for name, node in root.members(max_depth=None):
            if isinstance(node, zarr.Array) and not name.startswith(("probes/", "checkpoints/optimizer/")):
                assert check_node(path, root, name, node, attrs), name  # declared, and as declared
                seen.add(name)
        policy = S.log_policy(attrs)
        assert {f"log/{n}" for n in S.log_record_names(policy)} <= seen
        assert not {f"log/{n}" for n in S.log_record_names(S.LOG_FULL if policy == S.LOG_SUMMARY else
                                                            S.LOG_SUMMARY)} & seen
        assert {f"log/{n}" for n in S.LOG_SCALARS} | {"snapshots/iteration", "checkpoints/iteration"} <= seen
    assert len(read_probes(full).data_vars) > 40


def test_load_model_loads_the_checkpoint_a_selection_holds(base):
    """A Dataset's checkpoint index after isel/sel is the store's positions: load_model loads the
    checkpoint the selection holds, counted within it."""
    import torch

    ds = lrscope.open_run(base)
    n = ds.sizes["checkpoint"]
    state = [load_model(base, checkpoint=k).state_dict() for k in range(n)]

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert not same(state[0], state[-1])
    assert same(load_model(ds.isel(checkpoint=[0]), checkpoint=-1).state_dict(), state[0])
    assert same(load_model(ds.isel(checkpoint=1)).state_dict(), state[1])
    assert same(load_model(ds.isel(checkpoint=[2, 0]), checkpoint=0).state_dict(), state[2])
    assert same(load_model(ds.sel(checkpoint=slice(1, 2))).state_dict(), state[2])
    assert same(load_model(ds).state_dict(), state[-1])


@pytest.mark.parametrize("case", ["log-loss-int32", "probe-features-chunks-swapped", "batch-logits-transpose",
                                  "probe-var-scale-factor"])
def test_a_sweep_reads_an_edited_run_as_written_or_refuses_it(base, tmp_path, case):
    """open_sweep reads the second run of a layout with the first run's (checked) metadata: an
    edit to the second run's zarr.json is refused or changes nothing, never the numbers."""
    first, second = tmp_path / "a" / base.name, tmp_path / "b" / base.name
    shutil.copytree(base, first)
    shutil.copytree(base, second)
    for rel, fn in METADATA_R3[case]:
        _edit_json(second, rel, fn)
    want = lrscope.open_sweep([first]).load()
    try:
        sw = lrscope.open_sweep([first, second]).load()
    except StoreError as e:
        assert "\n" not in str(e)
        return
    for name, var in want.data_vars.items():
        a = np.asarray(var.isel(run=0).values)
        b = np.asarray(sw[name].isel(run=1).values)
        assert a.dtype.kind == "O" or np.array_equal(a, b, equal_nan=True), name


def test_report_refuses_a_fifo_chunk_without_hanging(base, tmp_path, no_hang):
    from click.testing import CliRunner

    from lrscope.cli.probe import main as lrprobe

    store = tmp_path / "runs" / base.name
    shutil.copytree(base, store)
    _on_chunk("log/loss", _fifo)(store)
    before = tree(tmp_path)
    res = CliRunner().invoke(lrprobe, ["report", str(store), "-o", str(tmp_path / "r.html"), "--no-compute"])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and ln.startswith("Error")]
    assert res.exit_code == 2 and len(lines) == 1 and "not a regular file" in lines[0], res.output
    assert tree(tmp_path) == before


@pytest.mark.parametrize("what", ["chunk", "metadata"])
def test_an_unreadable_file_is_a_one_line_error(base, tmp_path, monkeypatch, what):
    """PermissionError (what chmod 000 gives a user other than root; simulated here, as the tests
    may run as root) while reading a chunk or a zarr.json: a one-line StoreError naming the file."""
    from zarr.storage import _local

    store = tmp_path / base.name
    shutil.copytree(base, store)
    target = "log/loss/c/0" if what == "chunk" else "snapshots/test_logits/zarr.json"
    real = _local._get

    def denied(path, prototype, byte_range):
        if str(path).endswith(target):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, prototype, byte_range)

    monkeypatch.setattr(_local, "_get", denied)
    for read in (lambda: lrscope.open_run(store).load(), lambda: lrscope.open_sweep([store]).load()):
        with pytest.raises(StoreError, match=f"{target} cannot be read .Permission denied") as e:
            read()
        assert "\n" not in str(e.value)


def test_synchronous_reads_are_checked_too(base, tmp_path):
    """Zarr's synchronous read path (StorePath.get_sync) goes through the same checks."""
    from lrscope.store.checked import CheckedStore

    store = tmp_path / base.name
    shutil.copytree(base, store)
    _on_chunk("log/loss", _fifo)(store)
    (store / "outside").write_bytes(b"x")
    os.symlink(store / "outside", store / "log/link")
    cs = CheckedStore(store)
    assert cs.get_sync("zarr.json") is not None
    with pytest.raises(StoreError, match="not a regular file"):
        cs.get_sync("log/loss/c/0")
    with pytest.raises(StoreError, match="symbolic link"):
        cs.get_sync("log/link")


def test_the_round_3_tables_are_big_enough():
    n = len(METADATA_R3) + len(FILES_R3) + len(IGNORED)
    assert n >= 90, n


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "existing-folder"])
def test_figures_of_a_damaged_store_leave_nothing_behind(base, tmp_path, existing):
    """`lrprobe figures` reads the stores lazily, figure by figure: a chunk found damaged halfway
    is the one-line error, and the folder it would have created (or the files it had written into
    an existing one) are gone; an existing folder's own files stay."""
    from click.testing import CliRunner

    from lrscope.cli.probe import main as lrprobe

    store = tmp_path / "runs" / base.name
    shutil.copytree(base, store)
    _flip(chunk(store, "log/loss"))
    out = tmp_path / "figs"
    if existing:
        out.mkdir()
        (out / "mine.txt").write_text("kept")
    before = tree(tmp_path)
    res = CliRunner().invoke(lrprobe, ["figures", str(tmp_path / "runs"), "-o", str(out)])
    assert res.exit_code == 2 and res.stderr.startswith("Error: ") and "log/loss" in res.stderr, res.output
    assert tree(tmp_path) == before
