"""The run-store schema: every group, array and dimension name lives here, nowhere else.

A run store is one Zarr v3 group (a directory ``<run>.zarr``)::

    zarr.json            attrs: schema_version, config, status, reason, committed, versions, ...
    data/{train,test}/   labels, written once (dim train_sample / test_sample)
    data/probe/          the probe subset: index into test, labels, inputs (dim probe_sample)
    log/                 one row per optimizer step (dim iteration), flushed in blocks
    snapshots/           per-sample logits and probe activations (dim snapshot)
    checkpoints/         params/<name> (checkpoint, *shape); optimizer/<slot>/... for resume
    probes/<name>/       xarray Datasets written by lrprobe

Appends are committed by rewriting ``attrs["committed"]`` last (Zarr's LocalStore writes
metadata atomically: temp file + rename); readers trim every appendable array to it.
"""

from __future__ import annotations

# 1: the first stores. 2: every array ends its codecs with a crc32c checksum, every chunk is written
# (even one equal to the fill value), and snapshots/{test,train}_evaluated say which logits rows
# were evaluated; readers of schema-2 stores treat a missing or failing chunk as damage. Stores of
# schema 1 still open (without those checks) and resume as schema 1.
SCHEMA_VERSION = 2
CHECKSUM_SCHEMA = 2

# ---- root attributes -------------------------------------------------------------------
ATTR_SCHEMA = "schema_version"
ATTR_CONFIG = "config"
ATTR_STATUS = "status"
ATTR_REASON = "reason"
ATTR_COMMITTED = "committed"
ATTR_VERSIONS = "versions"
ATTR_DEVICE = "device"
ATTR_TIMINGS = "timings"
ATTR_RUN_ID = "run_id"
ATTR_DIVERGED_AT = "diverged_at"
ATTR_MODEL_INFO = "model_info"  # input shape, classes, penultimate width, param names
ATTR_REGIONS = "regions"  # input regions (core/spurious/noise) for attribution shares
ATTR_KIND = "lrscope"  # marker: value "run" on every run store

STATUS_RUNNING = "running"
STATUS_COMPLETED = "completed"
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"
STATUSES = (STATUS_RUNNING, STATUS_COMPLETED, STATUS_DIVERGED, STATUS_FAILED)
FINISHED = (STATUS_COMPLETED, STATUS_DIVERGED)

# ---- groups ----------------------------------------------------------------------------
G_DATA = "data"
G_LOG = "log"
G_SNAP = "snapshots"
G_CKPT = "checkpoints"
G_PARAMS = "checkpoints/params"
G_OPTIM = "checkpoints/optimizer"
G_PROBES = "probes"
SPLITS = ("train", "test", "probe")

# ---- dimensions ------------------------------------------------------------------------
D_ITER = "iteration"
D_SLOT = "batch_slot"
D_SNAP = "snapshot"
D_CKPT = "checkpoint"
D_CLASS = "class"
D_NEURON = "neuron"
D_SAMPLE = {"train": "train_sample", "test": "test_sample", "probe": "probe_sample"}
# appendable dims and the committed-length key that bounds them
APPEND_DIMS = {D_ITER: "iteration", D_SNAP: "snapshot", D_CKPT: "checkpoint"}

# ---- data/<split>/ arrays (labels) -----------------------------------------------------
LABELS = ("y", "b", "bias_conflicting", "group", "index")
A_INPUTS = "inputs"  # data/probe/inputs (probe_sample, *input_shape)
A_TEST_INDEX = "test_index"  # data/probe/test_index: position of each probe sample in test

# ---- log/ arrays (dim iteration) -------------------------------------------------------
LOG_SCALARS = (
    "lr",
    "loss",
    "accuracy",
    "bc_loss_sum",
    "ba_loss_sum",
    "bc_count",
    "ba_count",
    "grad_norm",
    "param_norm",
    "logit_norm",
)
A_BATCH_INDEX = "batch_index"  # (iteration, batch_slot) int32, -1 = empty slot
A_BATCH_LOGITS = "batch_logits"  # (iteration, batch_slot, class) float16

# ---- snapshots/ arrays (dim snapshot) --------------------------------------------------
A_SNAP_ITER = "iteration"
A_TEST_LOGITS = "test_logits"  # (snapshot, test_sample, class) float32, NaN at light snapshots
A_PROBE_LOGITS = "probe_logits"  # (snapshot, probe_sample, class) float32, every snapshot
A_TRAIN_LOGITS = "train_logits"  # (snapshot, train_sample, class) float32, NaN when not evaluated
A_PROBE_FEATURES = "probe_features"  # (snapshot, probe_sample, neuron) float32
A_TEST_EVALUATED = "test_evaluated"  # (snapshot,) bool: test_logits evaluated at this snapshot (schema 2)
A_TRAIN_EVALUATED = "train_evaluated"  # (snapshot,) bool: train_logits evaluated at this snapshot (schema 2)

# ---- checkpoints/ ----------------------------------------------------------------------
A_CKPT_ITER = "iteration"
OPTIM_SLOTS = 2  # optimizer state is double-buffered: slot = checkpoint % 2
