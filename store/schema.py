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


# ---- what every variable means -----------------------------------------------------------
# name -> attrs that open_run / open_sweep put on the variable of that name: long_name (a
# short label, for axes), description (one line: what it is, how it was measured) and units
# where they apply (iteration, count, fraction, probability, nats). A probe result's own attrs
# win over these (its long_name may name its parameters). `describe(name)` also covers the
# names made from patterns (`<x>_final`, attribution shares per region, pruning kinds).
def _d(long_name: str, description: str, units: str | None = None) -> dict[str, str]:
    return {"long_name": long_name, "description": description, **({"units": units} if units else {})}


_SPLIT_WORDS = {"train": "training split", "test": "test split",
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
                       "(float16; the Dataset-Cartography record of every train sample once per epoch)"),
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
    "attr_checkpoint": _d("attributed checkpoint", "checkpoint position whose network was attributed"),
    "attr_iteration": _d("attributed iteration", "iteration of the attributed checkpoint", "iteration"),
    "map_sample_index": _d("map sample", "probe_sample position of each attribution map's sample"),
    "map_y": _d("map sample class label", "class label y of each attribution map's sample"),
    "map_b": _d("map sample bias label", "bias label b of each attribution map's sample"),
    "map_bias_conflicting": _d("map sample bias-conflicting", "whether each attribution map's sample is "
                               "bias-conflicting (b ≠ y)"),
    # a sweep's run coordinates
    "run": _d("run", "run id (the store's name): `sw.sel(run=<id>)` selects one run"),
    "status": _d("run status", "completed, diverged (a non-finite loss ended it), running or failed"),
    # probes: accuracy
    "unbiased_accuracy": _d("unbiased test accuracy", "accuracy on the test split, whose bias is uncorrelated with the "
                            "class (y ⟂ b), at full snapshots; NaN at light ones", "fraction"),
    "worst_group_accuracy": _d("worst-group accuracy", "lowest accuracy over the (y, b) groups of the test split",
                               "fraction"),
    "group_accuracy": _d("group accuracy", "test accuracy per (y, b) group", "fraction"),
    "bc_accuracy": _d("bias-conflicting accuracy", "test accuracy on the bias-conflicting samples (b ≠ y)", "fraction"),
    "ba_accuracy": _d("bias-aligned accuracy", "test accuracy on the bias-aligned samples (b = y)", "fraction"),
    "probe_accuracy": _d("probe-subset accuracy", "accuracy on the group-balanced probe subset, at every snapshot",
                         "fraction"),
    "probe_worst_group_accuracy": _d("probe-subset worst-group accuracy", "lowest (y, b) group accuracy on the probe "
                                     "subset, at every snapshot", "fraction"),
    "train_accuracy": _d("train accuracy", "accuracy on the whole training split where it was evaluated", "fraction"),
    # loss_ratio
    "loss_ratio": _d("BC loss ratio", "bias-conflicting share of the step's minibatch loss: Σ BC losses / Σ all "
                     "losses (Barsbey et al. Fig. 12)", "fraction"),
    "max_loss_ratio": _d("max BC loss ratio", "maximum over training of a single minibatch's BC loss ratio (the "
                         "paper's Fig. 12 quantity)", "fraction"),
    "max_loss_ratio_smoothed": _d("max smoothed BC loss ratio", "maximum over training of the BC loss ratio's running "
                                  "mean over one epoch of steps", "fraction"),
    "ba_bc_loss_ratio": _d("BA/BC loss ratio", "mean bias-aligned loss / mean bias-conflicting loss on the training "
                           "split, at snapshots with train logits"),
    # compressibility
    "activation_compressibility": _d("activation compressibility", "(q, κ)-compressibility of each probe sample's "
                                     "penultimate activations (relative error of keeping the largest κ share), "
                                     "mean over the probe subset; q and kappa in attrs"),
    "activation_sparsity": _d("activation sparsity", "fraction of penultimate activations that are zero, mean over "
                              "the probe subset", "fraction"),
    "activation_pq_index": _d("activation PQ-index", "PQ-index (p = 1, q = 2) of each probe sample's penultimate "
                              "activations, mean over the probe subset (higher: sparser)"),
    "param_compressibility": _d("parameter compressibility", "(q, κ)-compressibility of all weights together at the "
                                "last checkpoint"),
    "param_pq_index": _d("parameter PQ-index", "PQ-index (p = 1, q = 2) of all weights together at the last "
                         "checkpoint"),
    "param_sparsity": _d("parameter sparsity", "fraction of weights within 1e-8 of zero at the last checkpoint",
                         "fraction"),
    "layer_param_compressibility": _d("parameter compressibility per layer", "(q, κ)-compressibility of each "
                                      "parameter tensor at the last checkpoint (names: layer_name)"),
    "layer_param_pq_index": _d("parameter PQ-index per layer", "PQ-index of each parameter tensor at the last "
                               "checkpoint (names: layer_name)"),
    # representation
    "csi": _d("class selectivity index", "CSI of each penultimate neuron on the probe subset: selectivity with "
              "coverage for the class label y (Barsbey et al. §3.3)"),
    "bsi": _d("bias selectivity index", "BSI of each penultimate neuron: selectivity for the bias label b"),
    "csi_mean": _d("average CSI", "mean CSI over the penultimate neurons: core-feature utilisation"),
    "bsi_mean": _d("average BSI", "mean BSI over the penultimate neurons: spurious-feature utilisation"),
    "class_separation": _d("class separation R²", "R² class separation of the penultimate activations of the probe "
                           "subset (Kornblith et al.)"),
    "class_dominant_fraction": _d("class-dominant neurons", "fraction of penultimate neurons whose CSI exceeds their "
                                  "BSI", "fraction"),
    "class_neuron_survival": _d("class-dominant survival", "fraction of the snapshot's class-dominant neurons that are "
                                "still class-dominant at the final snapshot", "fraction"),
    "bias_neuron_survival": _d("bias-dominant survival", "fraction of the snapshot's bias-dominant neurons that are "
                               "still bias-dominant at the final snapshot", "fraction"),
    # feature_quality
    "core_probe_error": _d("core linear-probe error", "error of a logistic-regression probe for the class y on the "
                           "penultimate activations (Springer et al.)", "fraction"),
    "spurious_probe_error": _d("spurious linear-probe error", "error of a logistic-regression probe for the bias "
                               "label b on the penultimate activations", "fraction"),
    # pruning
    "prunability": _d("κ-prunability", "mean over κ of the retention ratio Acc(f^κ) / Acc(f) after structured "
                      "pruning (lowest incoming-weight L2 norms per layer) at the last checkpoint, not clipped "
                      "(the paper's definition)"),
    "pruned_accuracy": _d("mean pruned accuracy", "mean over κ of the accuracy after structured pruning, Acc(f^κ) "
                          "(an extra view, not the paper's prunability)", "fraction"),
    "criterion": _d("pruning criterion", "how structured pruning ranks the units it removes (incoming: lowest "
                    "incoming-weight L2 norm per layer, the default; incoming-global; outgoing; in-x-out)"),
    "pruning_by_criterion": _d("structured pruning curve per criterion", "accuracy after structured pruning of a "
                               "fraction κ of the units, ranked by each criterion, at the last checkpoint", "fraction"),
    "pruning_by_criterion_se": _d("standard error (pruning per criterion)", "binomial standard error "
                                  "sqrt(a(1 − a)/n) of pruning_by_criterion over the n = pruning_samples samples",
                                  "fraction"),
    "prunability_by_criterion": _d("κ-prunability per criterion", "mean over κ of Acc(f^κ) / Acc(f) after "
                                   "structured pruning ranked by each criterion (not clipped)"),
    "pruning_samples": _d("pruning evaluation samples", "number of samples every pruned network was evaluated on",
                          "count"),
    # importance
    "importance_gini": _d("importance Gini", "Gini coefficient of the per-sample importance weights 1 − p(y|x) on "
                          "the training split (Springer et al.)"),
    "importance_lorenz": _d("importance Lorenz curve", "share of the total importance weight held by the top fraction "
                            "of training samples", "fraction"),
    "lorenz_snapshot": _d("Lorenz-curve snapshot", "snapshot position each Lorenz curve was taken at"),
}
_PRUNING_KINDS = {"structured": "whole units of every hidden layer (neurons, filters) by incoming-weight L2 norm",
                  "magnitude": "single weights by "
                  "magnitude", "column": "input columns of each layer by norm"}
_ATTR_METHODS = {"ig": "Integrated Gradients", "deeplift": "DeepLift"}


def describe(name: str) -> dict[str, str] | None:
    """The attrs of DESCRIPTIONS for a variable name, including the pattern-made names; None
    for a name nobody described."""
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
    for kind, how in _PRUNING_KINDS.items():
        if name == f"pruning_{kind}":
            return _d(f"{kind} pruning curve", f"accuracy after pruning a fraction κ ({how}) at the last checkpoint",
                      "fraction")
        if name == f"pruning_{kind}_se":
            return _d(f"standard error ({kind} pruning)", f"binomial standard error sqrt(a(1 − a)/n) of pruning_{kind} "
                      "over the n = pruning_samples samples", "fraction")
        if name == f"prunability_{kind}":
            return _d(f"κ-prunability ({kind})", f"mean over κ of Acc(f^κ) / Acc(f), pruning {how} (not clipped)")
    method, _, rest = name.partition("_")
    if method in _ATTR_METHODS:
        full = _ATTR_METHODS[method]
        if rest == "entropy":
            return _d(f"{full} entropy", f"normalised entropy of the |{full}| attribution over the input, mean over "
                      "the attributed probe samples (1: spread evenly)")
        if rest == "maps":
            return _d(f"{full} maps", f"{full} attributions of up to 16 probe samples, taken in turn from every "
                      "(y, b) group (labels: map_y, map_b), at the last attributed checkpoint")
        if rest.endswith("_share"):
            region = rest[:-6]
            return _d(f"{full} share on {region}", f"share of the |{full}| attribution mass on the {region} inputs, "
                      "mean over the attributed probe samples", "fraction")
    return None


# Config fields (a sweep's run coordinates): a few words each; the others get a generic line.
CONFIG_WORDS = {
    "dataset": "dataset name", "model": "model name", "lr": "configured learning rate (the per-step one is "
    "lr_schedule)", "seed": "initialisation and minibatch-order seed", "data_seed": "dataset generation seed",
    "batch_size": "minibatch size", "optimizer": "optimizer", "momentum": "SGD momentum", "weight_decay":
    "L2 weight decay", "l1": "L1 penalty coefficient", "loss": "training loss (ce or focal)", "focal_gamma":
    "focal-loss γ", "schedule": "learning-rate schedule", "sam_rho": "SAM/ASAM neighbourhood radius", "max_steps":
    "step budget", "stop": "stop criterion", "train_logits": "when train-split logits were recorded",
}


def describe_config(field: str) -> dict[str, str]:
    """The attrs of the `run` coordinate made from a config field."""
    words = CONFIG_WORDS.get(field, f"config field {field}")
    return _d(words.split(" (")[0], f"the run's {words} (RunConfig.{field}), one value per run")
