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
            elif p.is_file():
                out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
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
