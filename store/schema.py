"""The run-store schema: every group, array and dimension name lives here, nowhere else.

A run store is one Zarr v3 group (a directory ``<run>.zarr``)::

    zarr.json            attrs: schema_version, config, status, reason, committed, versions, ...
    data/{train,test}/   labels, written once (dim train_sample / test_sample)
    data/val/            the validation split's labels (dim val_sample), where the run has one
    data/probe/          the probe subset: index into test, labels, inputs (dim probe_sample)
    log/                 one row per optimizer step (dim iteration), flushed in blocks
    snapshots/           per-sample logits and probe activations (dim snapshot)
    checkpoints/         params/<name> (checkpoint, *shape); optimizer/<slot>/... for resume
    probes/<name>/       xarray Datasets written by lrprobe

Appends are committed by rewriting ``attrs["committed"]`` last (Zarr's LocalStore writes
metadata atomically: temp file + rename); readers trim every appendable array to it.
"""

from __future__ import annotations

import re

# 1: the first stores. 2: every array ends its codecs with a crc32c checksum, every chunk is written
# (even one equal to the fill value), and snapshots/{test,train}_evaluated say which logits rows
# were evaluated; readers of schema-2 stores treat a missing or failing chunk as damage. Stores of
# schema 1 still open (without those checks) and resume as schema 1. 3: the minibatch record may be
# a summary (root attribute log_logits = "summary": log/batch_loss, batch_true_logprob, ... instead of
# log/batch_logits); a store whose log holds the full logits is written as schema 2 (its layout is
# schema 2's, so an older lrscope still reads it), a summary store as schema 3 (an older lrscope
# refuses it as newer rather than calling it truncated).
SCHEMA_VERSION = 3
CHECKSUM_SCHEMA = 2
SUMMARY_SCHEMA = 3

# ---- root attributes -------------------------------------------------------------------
ATTR_SCHEMA = "schema_version"
ATTR_CONFIG = "config"
ATTR_STATUS = "status"
ATTR_REASON = "reason"
ATTR_COMMITTED = "committed"
ATTR_VERSIONS = "versions"
ATTR_DEVICE = "device"
ATTR_DATA_PLACEMENT = "data_placement"  # device | host | mmap: where the run's data lived (train/placement.py)
ATTR_TIMINGS = "timings"
ATTR_RUN_ID = "run_id"
# What lrscope writes as a run id (a folder name: no separators) and as a dataset or model name (a
# registry name, a name given to the recording API, or a plugin's import path `pkg.module:function`):
# letters, digits, `_ . -`. Readers refuse anything else in a
# store's root attributes: these strings are shown in terminals and web pages.
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,199}(:[A-Za-z_][A-Za-z0-9_.]{0,199})?$")
ATTR_DIVERGED_AT = "diverged_at"
# bool on a completed run: its stop criterion held (False: it ran out of max_steps first)
ATTR_STOP_MET = "stop_criterion_met"
ATTR_MODEL_INFO = "model_info"  # input shape, classes, penultimate width, param names
# model_info["recorded_by"] of a run recorded from a user's own loop (lrscope.Recorder, train/api.py):
# its network is the user's class, which the store does not rebuild (no pickle); model_info also
# holds "model_class" and "features_at" (every run's model_info lists "parameter_names")
RECORDED_BY_API = "lrscope.Recorder"


def recorded_by_api(attrs: dict) -> bool:
    """Whether a run store's root attributes say it was recorded from a user's own loop."""
    info = attrs.get(ATTR_MODEL_INFO)
    return isinstance(info, dict) and info.get("recorded_by") == RECORDED_BY_API
ATTR_REGIONS = "regions"  # input regions (core/spurious/noise) for attribution shares
# bool: the data has a bias attribute (False: b = y is only a placeholder, the probes that need a
# bias attribute are not defined); absent (stores written before it): True
ATTR_HAS_BIAS = "has_bias"
ATTR_KIND = "lrscope"  # marker: value "run" on every run store
# the run's plugins (a model or dataset from outside lrscope, train/plugins.py): kind -> {import_path,
# distribution, version, sha256 of the module file, source (its file name)}; absent: built-ins only
ATTR_PLUGINS = "plugins"
ATTR_LOG_LOGITS = "log_logits"  # the resolved minibatch-record policy: "full" or "summary" (absent: full)

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
SPLITS = ("train", "test", "probe", "val")
# splits a run may lack: stores written before the validation split, runs with val_fraction 0 and no
# shipped one, runs recorded from a user's loop (data/val/, snapshots/val_logits and val_evaluated absent)
OPTIONAL_SPLITS = ("val",)

# ---- dimensions ------------------------------------------------------------------------
D_ITER = "iteration"
D_SLOT = "batch_slot"
D_SNAP = "snapshot"
D_CKPT = "checkpoint"
D_CLASS = "class"
D_NEURON = "neuron"
D_SAMPLE = {"train": "train_sample", "test": "test_sample", "probe": "probe_sample", "val": "val_sample"}
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

# ---- the minibatch record: full logits, or a per-sample summary -------------------------
# `log_logits` (RunConfig) is auto | full | summary; auto resolves by the number of classes and the
# store keeps the resolved policy in its root attribute log_logits. "full": log/batch_logits as above.
# "summary": per (iteration, batch_slot) what every probe reads instead of the logits, computed on the
# host from the float32 training logits (float64 arithmetic), 13 bytes a slot whatever the classes:
LOG_FULL, LOG_SUMMARY = "full", "summary"
LOG_POLICIES = (LOG_FULL, LOG_SUMMARY)
LOG_SETTINGS = ("auto", *LOG_POLICIES)
# auto keeps the full logits up to this many classes: 2 bytes a class, at most 32 B a slot (2.5x the
# summary's 13 B, and the whole prediction kept: every dataset of the paper has 2 or 10 classes);
# above it (CIFAR-100, ImageNet) the summary, whose size does not grow with the classes.
FULL_LOGITS_MAX_CLASSES = 16
A_BATCH_LOSS = "batch_loss"  # float32: the sample's training loss (CE or focal, as optimised; no L1)
A_BATCH_TRUE_LOGPROB = "batch_true_logprob"  # float32: log p(y | x), log-softmax of the true class
A_BATCH_TRUE_LOGIT = "batch_true_logit"  # float16: the true class's logit
A_BATCH_MARGIN = "batch_margin"  # float16: true logit - the largest other logit
A_BATCH_CORRECT = "batch_correct"  # bool: argmax == y (ties to the lowest class), as the log's accuracy
# name -> (dtype, fill value); empty slots and presentations without finite logits hold NaN / False
SUMMARY_ARRAYS = {A_BATCH_LOSS: ("float32", float("nan")), A_BATCH_TRUE_LOGPROB: ("float32", float("nan")),
                  A_BATCH_TRUE_LOGIT: ("float16", float("nan")), A_BATCH_MARGIN: ("float16", float("nan")),
                  A_BATCH_CORRECT: ("bool", False)}


def resolve_log_logits(setting: str, num_classes: int) -> str:
    """The minibatch-record policy a run with `log_logits=setting` records: auto is full up to
    FULL_LOGITS_MAX_CLASSES classes, summary above."""
    if setting == "auto":
        return LOG_FULL if num_classes <= FULL_LOGITS_MAX_CLASSES else LOG_SUMMARY
    if setting not in LOG_POLICIES:
        raise ValueError(f"log_logits must be one of {', '.join(LOG_SETTINGS)}, got {setting!r}")
    return setting


def log_policy(attrs: dict) -> str:
    """The resolved minibatch-record policy of a store from its root attributes (stores written
    before the policy existed hold the full logits)."""
    return attrs.get(ATTR_LOG_LOGITS, LOG_FULL)


def log_record_names(policy: str) -> tuple[str, ...]:
    """The log arrays of the minibatch record besides batch_index under a policy."""
    return (A_BATCH_LOGITS,) if policy == LOG_FULL else tuple(SUMMARY_ARRAYS)

# ---- snapshots/ arrays (dim snapshot) --------------------------------------------------
A_SNAP_ITER = "iteration"
A_TEST_LOGITS = "test_logits"  # (snapshot, test_sample, class) float32, NaN at light snapshots
A_PROBE_LOGITS = "probe_logits"  # (snapshot, probe_sample, class) float32, every snapshot
A_TRAIN_LOGITS = "train_logits"  # (snapshot, train_sample, class) float32, NaN when not evaluated
A_PROBE_FEATURES = "probe_features"  # (snapshot, probe_sample, neuron) float32
A_TEST_EVALUATED = "test_evaluated"  # (snapshot,) bool: test_logits evaluated at this snapshot (schema 2)
A_TRAIN_EVALUATED = "train_evaluated"  # (snapshot,) bool: train_logits evaluated at this snapshot (schema 2)
# the validation split's, evaluated at the full snapshots like the test split (only where the run has one)
A_VAL_LOGITS = "val_logits"  # (snapshot, val_sample, class) float32, NaN at light snapshots
A_VAL_EVALUATED = "val_evaluated"  # (snapshot,) bool: val_logits evaluated at this snapshot
# logits array -> its evaluated flags (the rows a reader may find missing: not evaluated)
EVALUATED = {A_TEST_LOGITS: A_TEST_EVALUATED, A_TRAIN_LOGITS: A_TRAIN_EVALUATED, A_VAL_LOGITS: A_VAL_EVALUATED}

# ---- checkpoints/ ----------------------------------------------------------------------
A_CKPT_ITER = "iteration"
OPTIM_SLOTS = 2  # optimizer state is double-buffered: slot = checkpoint % 2

# ---- names on read ---------------------------------------------------------------------
# A store array read under another name by open_run / open_sweep. log/lr is the LR of each
# step (the schedule applied); in a sweep `lr` is the configured LR of each run (a `run`
# coordinate), so the per-step one reads as `lr_schedule` everywhere.
V_LR_SCHEDULE = "lr_schedule"
READ_AS = {"lr": V_LR_SCHEDULE}

# Config fields that vary across a sweep's runs become `run` coordinates named after the field,
# except those whose name is a variable of every run (the per-step `loss`, the per-snapshot
# `train_logits`): they take this prefix (`cfg_loss`: 'ce' / 'focal'). open_sweep also prefixes
# any other field whose name a run's Dataset uses (a probe variable, say), so a coordinate never
# replaces a variable.
CONFIG_PREFIX = "cfg_"
CONFIG_COORD = {"loss": "cfg_loss", "train_logits": "cfg_train_logits"}

# Label coordinates open_run adds along probe dims: (y, b) of each group id, region names are
# the `region` index itself.
C_GROUP_LABEL, C_GROUP_Y, C_GROUP_B = "group_label", "group_y", "group_b"
C_LAYER_NAME = "layer_name"  # the parameter tensor of each `layer` (state-dict name)


# ---- what the store's variables mean -----------------------------------------------------
# name -> attrs that open_run / open_sweep put on the variable of that name: long_name (a
# short label, for axes), description (one line: what it is, how it was measured) and units
# where they apply (iteration, count, fraction, probability, nats). `describe(name)` also covers
# the names made from patterns (`<x>_final`, per-split labels). A probe's output variables are
# described by its declaration (`variables=`, `describe=` in @probe: probe/declare.py), which
# store/reader.py:_describe consults after this table; a probe result's own long_name wins.
def _d(long_name: str, description: str, units: str | None = None) -> dict[str, str]:
    return {"long_name": long_name, "description": description, **({"units": units} if units else {})}


_SPLIT_WORDS = {"train": "training split", "test": "test split",
                "val": "validation split (the dataset's own, or held out of the training pool: val_fraction)",
                "probe": "probe subset (group-balanced test samples whose activations are recorded)"}
_LABEL_WORDS = {
    "y": ("class label", "the target class y"),
    "b": ("bias label", "the spurious (bias) attribute b; datasets without one set b = y"),
    "bias_conflicting": ("bias-conflicting", "True where b differs from y (the spurious feature points the wrong way)"),
    "group": ("group id", "(y, b) group id, y · n_b + b (n_b bias values)"),
    "index": ("source index", "position of the sample in the source dataset it was drawn from"),
}

DESCRIPTIONS: dict[str, dict[str, str]] = {
    # log/ (dim iteration): one row per optimizer step
    V_LR_SCHEDULE: _d("learning rate at the step", "learning rate used by this optimizer step: the configured lr "
                      "through the schedule and warm-up (the run's configured lr is the `lr` coordinate of a sweep)"),
    "loss": _d("training loss", "mean minibatch loss of the step, the optimizer's objective without L1 (cross-entropy "
               "or focal, natural log)", "nats"),
    "accuracy": _d("minibatch accuracy", "fraction of the step's minibatch classified correctly, before the update",
                   "fraction"),
    "bc_loss_sum": _d("bias-conflicting loss sum", "sum of the per-sample losses of the minibatch's bias-conflicting "
                      "samples (b ≠ y)", "nats"),
    "ba_loss_sum": _d("bias-aligned loss sum", "sum of the per-sample losses of the minibatch's bias-aligned samples "
                      "(b = y)", "nats"),
    "bc_count": _d("bias-conflicting samples", "bias-conflicting samples (b ≠ y) in the step's minibatch", "count"),
    "ba_count": _d("bias-aligned samples", "bias-aligned samples (b = y) in the step's minibatch", "count"),
    "grad_norm": _d("gradient norm", "L2 norm over all parameters of the gradient of the step's objective (loss + L1; "
                    "SAM: the first gradient)"),
    "param_norm": _d("parameter norm", "L2 norm of all parameters, before the update"),
    "logit_norm": _d("logit norm", "mean over the minibatch of the L2 norm of each sample's logits"),
    A_BATCH_INDEX: _d("minibatch sample ids", "train_sample position of each minibatch slot at this step; -1: empty "
                      "slot (a short last batch)"),
    A_BATCH_LOGITS: _d("minibatch logits", "logits of each minibatch slot at this step, from the training forward pass "
                       "(float16; the Dataset-Cartography record of every train sample once per epoch; stores with "
                       "log_logits='full')"),
    A_BATCH_LOSS: _d("minibatch sample loss", "training loss of each minibatch slot at this step (cross-entropy or "
                     "focal, as optimised, without L1), from the float32 training logits; NaN: empty slot (stores "
                     "with log_logits='summary')", "nats"),
    A_BATCH_TRUE_LOGPROB: _d("true-class log-probability", "log p(y | x), the log-softmax of the true class, of each "
                             "minibatch slot at this step (float32, from the float32 logits: 1 - p stays exact near "
                             "p = 1); NaN: empty slot or non-finite logits (no prediction) (log_logits='summary')",
                             "nats"),
    A_BATCH_TRUE_LOGIT: _d("true-class logit", "logit of the true class of each minibatch slot at this step (float16; "
                           "log_logits='summary')"),
    A_BATCH_MARGIN: _d("minibatch margin", "true-class logit minus the largest other logit, per minibatch slot "
                       "(float16; positive: the true class alone has the largest logit; log_logits='summary')"),
    A_BATCH_CORRECT: _d("minibatch correct", "whether each minibatch slot was classified correctly at this step "
                        "(argmax of the float32 logits == y, ties to the lowest class; the log's accuracy counts "
                        "these; log_logits='summary')"),
    # snapshots/ (dim snapshot)
    A_TEST_LOGITS: _d("test logits", "logits of every test sample at the snapshot; NaN at light snapshots "
                      "(test_evaluated False)"),
    A_PROBE_LOGITS: _d("probe-subset logits", "logits of the probe subset (group-balanced test samples) at every "
                       "snapshot"),
    A_TRAIN_LOGITS: _d("train logits", "logits of every training sample at the snapshot; NaN where the train split "
                       "was not evaluated (train_evaluated False; always evaluated at the final snapshot)"),
    A_PROBE_FEATURES: _d("penultimate activations", "penultimate-layer activations (the features the head reads) of "
                         "the probe subset at every snapshot"),
    A_TEST_EVALUATED: _d("test logits evaluated", "whether test_logits holds values at this snapshot (full snapshots) "
                         "or NaN (light early ones)"),
    A_TRAIN_EVALUATED: _d("train logits evaluated", "whether train_logits holds values at this snapshot"),
    A_VAL_LOGITS: _d("validation logits", "logits of every validation sample (data/val: the dataset's own validation "
                     "split, or the share val_fraction held out of the training pool) at the snapshot, evaluated at "
                     "the full snapshots like the test split; NaN at light snapshots (val_evaluated False); absent "
                     "where the run has no validation split"),
    A_VAL_EVALUATED: _d("validation logits evaluated", "whether val_logits holds values at this snapshot (full "
                        "snapshots) or NaN (light early ones)"),
    "probe_inputs": _d("probe-subset inputs", "raw inputs of the probe subset, as stored (float32, or uint8 images "
                       "scaled by 1/255 for the model)"),
    "regions": _d("input regions", "which input positions carry the core feature, the spurious feature or noise "
                  "(one boolean mask per region; attribution shares are taken over them)"),
    # indices and coordinates
    D_ITER: _d("iteration", "optimizer step, from 0 (log rows; snapshot/checkpoint iterations count steps done)",
               "iteration"),
    D_SNAP: _d("snapshot", "position in the run's snapshot schedule (0, 1, 2, 4, … then every snapshot_every steps, "
               "and the final one); the iteration it was taken at is snapshot_iteration"),
    "snapshot_iteration": _d("snapshot iteration", "optimizer steps done when the snapshot was taken (NaN: padding of "
                             "a shorter run in a sweep)", "iteration"),
    D_CKPT: _d("checkpoint", "position in the run's checkpoint list; the iteration is checkpoint_iteration"),
    "checkpoint_iteration": _d("checkpoint iteration", "optimizer steps done when the checkpoint was written",
                               "iteration"),
    "region": _d("input region", "name of the input region (core, spurious, noise, …)"),
    "group": _d("group id", "(y, b) group id, y · n_b + b; its y and b are group_y and group_b"),
    C_GROUP_LABEL: _d("group", "the (y, b) labels of the group, as 'y=<class>,b=<bias>'"),
    C_GROUP_Y: _d("group class label", "the class label y of the group"),
    C_GROUP_B: _d("group bias label", "the bias label b of the group"),
    C_LAYER_NAME: _d("layer", "state-dict name of the parameter tensor"),
    "subset": _d("training subset", "all training samples, the bias-aligned ones (b = y) or the bias-conflicting ones "
                 "(b ≠ y)"),
    "epoch": _d("epoch", "pass over the training split (an epoch's first iteration is dyn_epoch_first_iteration)"),
    "kappa": _d("κ (fraction pruned)", "fraction of the units (structured), columns or weights (magnitude) removed",
                "fraction"),
    "fraction": _d("fraction of samples", "fraction of the training samples, highest importance weight first",
                   "fraction"),
    "lorenz_at": _d("Lorenz-curve snapshot", "0: the first snapshot with train logits, 1: the last one (which "
                    "snapshots: lorenz_snapshot)"),
    "attr_checkpoint": _d("attributed checkpoint", "the n-th checkpoint attributed (0 = the first chosen, -1 = the "
                          "last); attr_checkpoint_position and attr_iteration say which checkpoint it is"),
    "reset_checkpoint": _d("examined checkpoint", "the n-th checkpoint the neuron_resets probe examined (evenly "
                           "spaced, first and last included)"),
    "reset_checkpoint_position": _d("examined checkpoint's position", "position of the examined checkpoint along "
                                    "the run's checkpoint dimension"),
    "reset_iteration": _d("examined iteration", "iteration of the examined checkpoint", "iteration"),
    "prop2_checkpoint": _d("Prop. 2 checkpoint", "the n-th checkpoint the prop2_gradients probe evaluated (evenly "
                           "spaced through the run's checkpoints)"),
    "prop2_iteration": _d("Prop. 2 checkpoint's iteration", "iteration of the evaluated checkpoint", "iteration"),
    "prop2_minibatch_iteration": _d("Prop. 2 minibatch's iteration", "the step whose recorded training minibatch "
                                    "was evaluated (the step taken from the checkpoint; the last one at the end)",
                                    "iteration"),
    "prop2_split_iteration": _d("Prop. 2 unit split's iteration", "iteration of the snapshot whose CSI/BSI split "
                                "the units into core, spurious and dead", "iteration"),
    "subnetwork": _d("subnetwork", "penultimate units and their own parameters: core (CSI > BSI), spurious "
                     "(BSI >= CSI), dead (CSI = BSI = 0)"),
    "minibatch_part": _d("minibatch part", "bias-aligned (y = b) or bias-conflicting (y != b) samples of the "
                         "minibatch"),
    "reset_neuron": _d("followed neuron", "the n-th neuron the neuron_resets probe follows (highest final BSI "
                       "first)"),
    "reset_neuron_index": _d("neuron index", "index of the followed neuron along the run's neuron dimension"),
    "attr_checkpoint_position": _d("attributed checkpoint's position", "position of the attributed checkpoint "
                                   "along the run's checkpoint dimension"),
    "attr_iteration": _d("attributed iteration", "iteration of the attributed checkpoint", "iteration"),
    "map_sample_index": _d("map sample", "probe_sample position of each attribution map's sample"),
    "map_y": _d("map sample class label", "class label y of each attribution map's sample"),
    "map_b": _d("map sample bias label", "bias label b of each attribution map's sample"),
    "map_bias_conflicting": _d("map sample bias-conflicting", "whether each attribution map's sample is "
                               "bias-conflicting (b ≠ y)"),
    # a sweep's run coordinates
    "run": _d("run", "run id (the store's name): `sw.sel(run=<id>)` selects one run"),
    "status": _d("run status", "completed, diverged (a non-finite loss ended it), running or failed"),
    "stop_criterion_met": _d("stop criterion met", "whether the run's stop criterion held when it ended (False: "
                             "max_steps ended it first, or it diverged or has not ended)"),
}
def describe(name: str) -> dict[str, str] | None:
    """The attrs of DESCRIPTIONS for a variable name, including the pattern-made names; None
    for a name it does not describe (a probe's variables are described by their probe's
    declaration: probe/registry.py:describe)."""
    if name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    if name.endswith("_final") and name[:-6] in DESCRIPTIONS:
        d = DESCRIPTIONS[name[:-6]]
        return {**d, "long_name": f"{d['long_name']} (final)",
                "description": f"{name[:-6]} at the run's final snapshot ({name[:-6]}: {d['description']})"}
    for split, words in _SPLIT_WORDS.items():
        label = name[len(split) + 1:]
        if name.startswith(split + "_") and label in _LABEL_WORDS:
            long, desc = _LABEL_WORDS[label]
            return _d(f"{split} {long}", f"{desc}, per sample of the {words}")
    if name == "probe_test_index":
        return _d("test position", "position in the test split of each probe-subset sample")
    return None


# Config fields (a sweep's run coordinates): a few words each; the others get a generic line.
CONFIG_WORDS = {
    "dataset": "dataset name", "model": "model name", "lr": "configured learning rate (the per-step one is "
    "lr_schedule)", "seed": "initialisation and minibatch-order seed", "data_seed": "dataset generation seed",
    "batch_size": "minibatch size", "optimizer": "optimizer", "momentum": "SGD momentum", "weight_decay":
    "L2 weight decay", "l1": "L1 penalty coefficient", "loss": "training loss (ce or focal)", "focal_gamma":
    "focal-loss γ", "schedule": "learning-rate schedule", "sam_rho": "SAM/ASAM neighbourhood radius", "max_steps":
    "step budget", "stop": "stop criterion", "train_logits": "when train-split logits were recorded",
    "log_logits": "minibatch-record policy (auto, full logits or a per-sample summary; the store's log_logits "
    "attribute holds the resolved one)",
    "step_at": "iteration of the step schedule's LR drop (S)", "step_factor": "step schedule's LR multiplier",
    "kron_beta": "PSGD-Kron momentum", "kron_precond_lr": "PSGD-Kron preconditioner learning rate",
}


def describe_config(field: str) -> dict[str, str]:
    """The attrs of the `run` coordinate made from a config field."""
    words = CONFIG_WORDS.get(field, f"config field {field}")
    return _d(words.split(" (")[0], f"the run's {words} (RunConfig.{field}), one value per run")


# ---- array declarations ----------------------------------------------------------------
# What RunWriter.create (store/writer.py) creates for every array a reader reads: dtypes, fill value,
# dimension names and rows per chunk along the first dim (None: written whole, one chunk, or Zarr's
# own chunks when empty). Readers check each array's metadata against this before reading a chunk
# (store/reader.py:_check_node) and read no array it does not name (an unknown array or file in a
# run's groups is ignored, never merged); tests/test_hostile_stores.py checks that freshly written
# stores of both minibatch-record policies match it exactly, so the writer and this table agree.
# probes/<name> group attribute: the arrays write_probe wrote (set with `complete`); readers read
# those and ignore any other array of the group (results written before it: every array)
ATTR_PROBE_ARRAYS = "lrscope_arrays"
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
FLOAT_DTYPES = ("float16", "float32", "float64")
ROWS_LOG, ROWS_LOG_BATCH, ROWS_INDEX, ROWS_SNAPSHOT = 4096, 256, 1024, 1  # writer's LOG_CHUNK, LOG_BATCH_CHUNK, ...


def array_spec(path: str, ndim: int, policy: str = LOG_FULL) -> tuple[tuple[str, ...], object, tuple[str, ...],
                                                                       int | None] | None:
    """(dtypes, fill, dims, rows per chunk) of the run array at `path` (relative to the store root)
    with `ndim` dimensions under minibatch-record `policy`; None for a path lrscope does not write
    there (or does not read: the optimizer state, read back only by a resume)."""
    parts = path.split("/")
    nan = float("nan")
    if parts[0] == G_DATA:
        if len(parts) == 3 and parts[1] in SPLITS:
            dim = (D_SAMPLE[parts[1]],)
            if parts[2] == "bias_conflicting":
                return ("bool",), False, dim, None
            if parts[2] in LABELS:
                return INT_DTYPES, 0, dim, None
            if parts[1] == "probe" and parts[2] == A_TEST_INDEX:
                return ("int64",), 0, dim, None
            if parts[1] == "probe" and parts[2] == A_INPUTS:
                return (*FLOAT_DTYPES, "uint8"), 0, (D_SAMPLE["probe"], *(f"input_{i}" for i in range(ndim - 1))), None
        if path == f"{G_DATA}/regions":
            return ("bool",), False, ("region", *(f"input_{i}" for i in range(ndim - 1))), None
        return None
    if parts[0] == G_LOG and len(parts) == 2:
        name = parts[1]
        if name in LOG_SCALARS:
            return ("int32",) if name.endswith("_count") else ("float32",), 0, (D_ITER,), ROWS_LOG
        if name == A_BATCH_INDEX:
            return ("int32",), -1, (D_ITER, D_SLOT), ROWS_LOG_BATCH
        if name == A_BATCH_LOGITS and policy == LOG_FULL:
            return ("float16",), 0, (D_ITER, D_SLOT, D_CLASS), ROWS_LOG_BATCH
        if name in SUMMARY_ARRAYS and policy == LOG_SUMMARY:
            dtype, fill = SUMMARY_ARRAYS[name]
            return (dtype,), fill, (D_ITER, D_SLOT), ROWS_LOG_BATCH
        return None
    if parts[0] == G_SNAP and len(parts) == 2:
        name = parts[1]
        if name == A_SNAP_ITER:
            return ("int64",), 0, (D_SNAP,), ROWS_INDEX
        if name in (A_TEST_EVALUATED, A_TRAIN_EVALUATED, A_VAL_EVALUATED):
            return ("bool",), False, (D_SNAP,), ROWS_INDEX
        for arr, split, fill in ((A_TEST_LOGITS, "test", nan), (A_TRAIN_LOGITS, "train", nan),
                                 (A_PROBE_LOGITS, "probe", nan), (A_VAL_LOGITS, "val", nan)):
            if name == arr:
                return ("float32",), fill, (D_SNAP, D_SAMPLE[split], D_CLASS), ROWS_SNAPSHOT
        if name == A_PROBE_FEATURES:
            return ("float32",), 0, (D_SNAP, D_SAMPLE["probe"], D_NEURON), ROWS_SNAPSHOT
        return None
    if path == f"{G_CKPT}/{A_CKPT_ITER}":
        return ("int64",), 0, (D_CKPT,), ROWS_INDEX
    if path.startswith(G_PARAMS + "/") and len(parts) == 3:
        return ("bool", *INT_DTYPES, *FLOAT_DTYPES), 0, (D_CKPT, *(f"{parts[2]}_{i}" for i in range(ndim - 1))), \
            ROWS_SNAPSHOT
    return None
