"""The probe registry: one entry per probe, declared once. `lrprobe list` prints the entries,
`lrprobe compute` runs their functions (probe/runner.py), `lrprobe ls` and the report show their
headline variables. Functions are named by dotted path and imported on first call, so this
module loads without xarray or torch (`lrprobe list` answers at once).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping

PROBE_FORMAT = 3  # bump when every probe's stored results must be recomputed


@dataclass(frozen=True)
class Headline:
    """A per-run scalar a probe writes that summaries show: in the report's summary table and its
    metrics-vs-LR figure (`label`), and as a column of `lrprobe ls` and of the report's run list
    when it has a `short` label."""

    var: str
    label: str
    short: str = ""


@dataclass(frozen=True)
class ProbeEntry:
    """One probe. `function` ("module:name") takes the runner's Context and returns an xarray
    Dataset; `format` is the version of its definition: bump it (above PROBE_FORMAT) when the
    probe's results change, and only its stored results are recomputed."""

    name: str
    function: str
    description: str
    format: int = PROBE_FORMAT
    cost: str = ""  # what it reads or runs, and what it costs next to training
    samples: str = ""  # which samples it is evaluated on (lrprobe list)
    default: bool = True  # computed by `lrprobe compute` without --only (False: a specialist probe, asked by name)
    params: Mapping[str, str] = field(default_factory=dict)  # parameter -> what it is (lrprobe compute's options)
    headline: tuple[Headline, ...] = ()
    # It runs the network rebuilt from a checkpoint (load_model): for a run of a plugin model it needs
    # the plugin importable and unchanged (train/plugins.py); the others read the stored arrays only.
    runs_model: bool = False
    plugin: str = ""  # a plugin probe: its distribution and version (set when its entry point is loaded)

    def load(self):
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, ctx) -> Any:
        return self.load()(ctx)


_R = "lrscope.probe.runner:"
PROBES: dict[str, ProbeEntry] = {e.name: e for e in [
    ProbeEntry(
        "accuracy", _R + "probe_accuracy",
        "Unbiased (the paper's: accuracy on the test split, where y and b are independent), worst-group, "
        "per-group, bias-aligned and bias-conflicting accuracy per snapshot, and the 'average accuracy' of "
        "Waterbirds/CelebA papers (test group accuracies weighted by the training groups' sizes): on the test "
        "split at full snapshots, on the group-balanced probe subset at every snapshot; train accuracy where "
        "train logits were recorded. *_final: the last snapshot's.",
        format=4,  # average_accuracy added
        cost="reads the stored logits (~0.01x of training on the demo sweep)",
        samples="the whole test split (full snapshots), the group-balanced probe subset (every snapshot), the "
                "training split (where train logits were recorded)",
        headline=(Headline("unbiased_accuracy_final", "unbiased test accuracy", "unb.acc"),
                  Headline("worst_group_accuracy_final", "worst-group accuracy", "worst"),
                  Headline("average_accuracy_final", "average accuracy (training-group weighted)"))),
    ProbeEntry(
        "loss_ratio", _R + "probe_loss_ratio",
        "The bias-conflicting / bias-aligned loss ratio of every minibatch, read from the per-step log; its "
        "maximum over training (max_loss_ratio, over single minibatches as in the paper's Fig. 12) and the "
        "maximum of its epoch running mean; the BA/BC loss ratio of the stored train logits per snapshot.",
        format=4,  # max_loss_ratio is the per-minibatch maximum (was the epoch running mean's)
        cost="reads the log (~0.01x)",
        samples="every training minibatch (the log), and the whole training split at snapshots with train logits"),
    ProbeEntry(
        "compressibility", _R + "probe_compressibility",
        "(q, kappa)-compressibility, sparsity and PQ-index of the probe subset's penultimate activations per "
        "snapshot (sparsity of the non-negative representation: max(0, h) for Swin-T), and of the last "
        "checkpoint's weights with more than one dimension (linear and convolution weights, as Diao et al. "
        "compute the PQ-index; biases and normalisation parameters left out), together and per tensor.",
        format=4,  # parameters: weight tensors with > 1 dimension only; sparsity on the non-negative representation
        cost="reads the stored activations and the last checkpoint (~0.03x)",
        samples="the probe subset (group-balanced test samples, --probe-size at training, default 1000)",
        params={"kappa": "kappa of the (q, kappa)-compressibility (lrprobe compute --kappa; default 0.1)",
                "q": "q of the (q, kappa)-compressibility (Python API; default 2)"},
        headline=(Headline("activation_compressibility_final", "activation compressibility"),)),
    ProbeEntry(
        "representation", _R + "probe_representation",
        "Class and bias selectivity of every penultimate neuron on the probe subset (CSI, BSI, in [0, 1]: "
        "computed on the non-negative representation, the post-ReLU activations, or max(0, h) for Swin-T whose "
        "features are signed) and their averages, class separation R² of the activations, and neuron survival "
        "(Fig. 18: the share of class- and bias-dominant neurons that keep their role until the end), per snapshot.",
        format=4,  # CSI/BSI on max(0, h) for models with signed features (Swin-T)
        cost="reads the stored activations (~0.01x)",
        samples="the probe subset",
        headline=(Headline("csi_mean_final", "average CSI", "CSI"),
                  Headline("class_separation_final", "class separation R²"))),
    ProbeEntry(
        "feature_quality", _R + "probe_feature_quality",
        "Linear probes (Springer et al.): held-out error of a logistic regression for the class (core) and "
        "for the bias label (spurious) on the probe subset's penultimate activations, every snapshot "
        "(fitting and held-out halves stratified by group).",
        format=4,  # two-label probes fit scikit-learn's binary objective (was the 2-class multinomial)
        cost="two small fits per snapshot (~0.04x on the demo sweep, ~0.013x of the CNN run)",
        samples="the probe subset: fitted on one half, the error measured on the other (halves stratified by group)"),
    ProbeEntry(
        "pruning", _R + "probe_pruning",
        "Accuracy of the last checkpoint's network pruned at kappa = 0, 0.1, ..., 0.9 (structured: whole neurons "
        "or filters, the head kept; magnitude: single weights, globally; column: input columns), on the test "
        "split rebuilt from the config when its labels match the store, else on the group-balanced probe "
        "subset, with the number of samples (pruning_samples) and each accuracy's binomial standard error "
        "(*_se). kappa-prunability: the mean over kappa of Acc(f^kappa) / Acc(f), not clipped (above 1 when "
        "pruning helps) - the paper's text says the sum of the ratios, its Table 1 is on the mean's scale; the "
        "sum is stored beside it (prunability_sum). The paper prunes neurons and kernels without saying how they are "
        "ranked: the default criterion removes the lowest incoming-weight L2 norms of each layer (`incoming`); "
        "--criterion adds incoming-global, outgoing and in-x-out along a criterion dimension "
        "(pruning_by_criterion, prunability_by_criterion), the default's prunability staying the headline. "
        "pruned_accuracy (the mean of Acc(f^kappa)) is an extra view, not the paper's number.",
        format=6,  # 5: prunability not clipped to [0, 1], criteria, sample count, standard errors; 6: the sum
        runs_model=True,
        cost="one pass over the evaluation samples (the test split) for every pruned network: 28 distinct networks "
             "(+9 per extra criterion), sliced to their kept units on lrscope's FCN and CNN, the first layer's "
             "outputs shared (~0.04x of a 3000-step Colored MNIST CNN run, benchmarks/RESULTS.md); --device",
        samples="the whole test split rebuilt from the config (its size: pruning_samples; each accuracy's standard "
                "error: *_se), else the probe subset",
        params={"kappas": "the pruned fractions (Python API; default 0, 0.1, ..., 0.9)",
                "criterion": "structured-pruning criteria: incoming (default, per layer), incoming-global, outgoing, "
                             "in-x-out, comma-separated, or all (lrprobe compute --criterion)",
                "eval_samples": "evaluate on a group-balanced subset of at most this many samples (lrprobe compute "
                                "--pruning-samples; default: all); the standard errors say what it costs"},
        headline=(Headline("prunability", "prunability", "prun"),
                  Headline("pruned_accuracy", "mean pruned accuracy"))),
    ProbeEntry(
        "importance", _R + "probe_importance",
        "Importance weights of the training samples (Springer et al.: 1 - p(y | x), each sample's share of "
        "the cross-entropy gradient) through training: per epoch from the minibatch log (full or summary "
        "record), their Gini coefficient over all, bias-aligned and bias-conflicting samples, the "
        "bias-conflicting share of the total, and Lorenz curves from the first to the last complete epoch; "
        "per snapshot from the stored train logits where the train split was evaluated (Gini, and Lorenz "
        "curves at the first and the last such snapshot).",
        format=4,  # the per-epoch trajectory from the minibatch log (was the snapshot train logits only)
        cost="streams the log's record once and reads the stored train logits (~0.05x)",
        samples="every training sample, at its presentation in each epoch's minibatches (and the whole training "
                "split at snapshots with train logits)"),
    ProbeEntry(
        "attributions", _R + "probe_attributions",
        "Integrated Gradients and DeepLift (Captum) on up to 256 group-balanced probe inputs at the chosen "
        "checkpoints: each method's attribution share per input region (core, spurious, noise) and "
        "normalised entropy (Fig. 10's attribution entropy), and the maps of up to 16 samples taken in turn from "
        "every (y, b) group, with their labels, at the last chosen checkpoint. With --segmenter-weights FILE (a "
        "local torchvision DeepLabV3 state dict, never downloaded): Fig. 10's background attribution percentage "
        "as each method's share of |attribution| on the pixels the segmenter calls background "
        "(<m>_background_share), the mean foreground fraction and the map samples' foreground masks.",
        format=6,  # segmenter background share (only with segmenter_weights; the other variables unchanged)
        runs_model=True,
        cost="one backward pass per checkpoint on the bias-free FCN and CNN (exact: x * grad f(x); ~0.004x of the "
             "CNN run at two checkpoints); elsewhere Captum, ig_steps passes for IG; with a segmenter, one "
             "segmenter forward per attributed input at 224x224, once per run; --device",
        samples="up to 256 probe-subset samples, evenly spaced through it (maps: 16, taken in turn from every group)",
        params={"checkpoints": "first,last | all | comma-separated positions (lrprobe compute --checkpoints)",
                "attr_samples": "probe inputs attributed (Python API; default 256)",
                "ig_steps": "Integrated Gradients steps (Python API; default 32)",
                "segmenter_weights": "a local state dict of the segmenter (lrprobe compute --segmenter-weights FILE, "
                                     "e.g. torchvision's deeplabv3_resnet50_coco-cd0a2569.pth); recorded by its "
                                     "sha256; absent: no background share",
                "segmenter": "deeplabv3_resnet50 (default), deeplabv3_resnet101 or deeplabv3_mobilenet_v3_large "
                             "(lrprobe compute --segmenter)"}),
    ProbeEntry(
        "prop2_gradients", "lrscope.probe.subnetworks:probe_prop2_gradients",
        "Proposition 2 (Barsbey et al. 2025, supplement D.2, Eq. 8) as stated: on the training minibatch of the "
        "step taken from each of up to 12 evenly spaced checkpoints, recomputed from that checkpoint, the summed "
        "per-sample gradient norms of the loss with respect to the spurious (bias-dominant, BSI >= CSI), core "
        "(class-dominant, CSI > BSI) and dead (CSI = BSI = 0) subnetworks - each unit's incoming weights and the "
        "head column reading it - for bias-aligned and bias-conflicting samples apart, their ratio, and the "
        "minibatch's logit norm (the scale the ratio grows with). Needs the training inputs (the dataset rebuilt).",
        cost="one per-sample backward pass (torch.func vmap) over a minibatch per checkpoint (~0.01x)",
        samples="the recorded training minibatch at each chosen checkpoint (BA and BC apart)",
        params={"prop2_checkpoints": "checkpoints evaluated, evenly spaced (Python API; default 12)"},
        runs_model=True,
        headline=(Headline("prop2_grad_ratio_final", "spurious / core gradient-norm ratio (Prop. 2, final)"),)),
    ProbeEntry(
        "subnetwork_gradients", "lrscope.probe.subnetworks:probe_subnetwork_gradients",
        "The head-column ratio (a cheap view, not Proposition 2's quantity): the summed per-sample gradient "
        "norms of the head's columns reading the bias-dominant (CSI <= BSI) over those reading the "
        "class-dominant (CSI > BSI) penultimate neurons at each snapshot, on the probe subset of the test split; "
        "exact from the stored probe logits and activations (||grad|| = ||softmax - onehot|| * ||h_S||, so per "
        "sample it is the activation-norm ratio ||h_S||/||h_C||).", format=PROBE_FORMAT + 1,
        cost="reads the stored probe logits and activations (~0.01x)",
        samples="the probe subset, every snapshot (all of it, and its bias-conflicting samples)"),
    ProbeEntry(
        "neuron_resets", "lrscope.probe.resets:probe_neuron_resets",
        "Per-neuron attribution resets (supplement Fig. 18, bottom): for the most bias-selective penultimate "
        "neurons (highest final BSI), the spurious-region share of each neuron's InputXGradient attribution at "
        "up to 24 evenly spaced checkpoints, the norm of its incoming weights' update since the previous one, the "
        "resets (falls of the share by >= 0.2) and the rank correlation of update size and fall. Needs input "
        "regions (parity, moon-star, the MNIST-style sets); resolution: the checkpoint interval.",
        runs_model=True,
        cost="one backward pass per chosen neuron and checkpoint over the probe inputs (~0.3 s a parity run "
             "for 8 neurons; asked by name: lrprobe compute --only neuron_resets)",
        default=False,
        samples="up to 256 probe-subset samples, evenly spaced through it (neurons chosen by BSI on the whole subset)",
        params={"reset_checkpoints": "checkpoints examined, evenly spaced (Python API; default 24)",
                "reset_neurons": "neurons followed, the highest final BSI first (Python API; default 8)",
                "attr_samples": "probe inputs attributed (Python API; default 256)"}),
    ProbeEntry(
        "selection", "lrscope.probe.selection:probe_selection",
        "Offline model selection (as SubpopBench, DomainBed and WILDS select): per full snapshot, the criteria a "
        "sweep's run and stopping point are picked by - validation worst-group accuracy (group labels), "
        "validation worst-class and validation average accuracy (no group labels), on the run's validation split "
        "(the dataset's own, or val_fraction of the training pool) - and the oracle's (test worst-group accuracy), "
        "with the test unbiased and worst-group accuracy a pick is judged by and the number of classes predicted "
        "(1: degenerate). lrscope.selection_table(open_sweep(...)) and the report's Model selection table pick over "
        "the sweep. A run without a validation split (stores written before it, val_fraction 0): the validation "
        "criteria are not defined, the oracle is; data without a bias attribute: the worst-group ones are not.",
        cost="reads the stored test and validation logits (~0.01x)",
        samples="the whole validation split and the whole test split, at full snapshots"),
    ProbeEntry(
        "dynamics", "lrscope.probe.dynamics:probe_dynamics",
        "Per training sample, from the minibatch log: Dataset-Cartography confidence, variability and "
        "correctness (Swayamdipta et al. 2020), forgetting events (Toneva et al. 2019), first-learned and "
        "last-mistake iterations; their summaries over bias-aligned and bias-conflicting samples and over "
        "(y, b) groups, and per-epoch curves. Defined on diverged runs.",
        cost="streams the log chunk by chunk in O(n_train) memory (~0.03x)",
        samples="every training sample, at each of its presentations in the minibatch log"),
]}

BUILT_IN = tuple(PROBES)


def _plugin_probes() -> tuple[dict[str, ProbeEntry], dict[str, str]]:
    """The probes installed distributions declare (entry points in the group lrscope.probes, each a
    ProbeEntry), marked with their distribution; and the entry points that could not be loaded
    (name -> one-line reason), which `lrprobe list` shows."""
    import dataclasses

    from ..train.plugins import distribution_of, listed

    out, broken = {}, {}
    for ep, e, error in listed("probe"):
        if error is None and (e.name in PROBES or e.name in out):
            error = f"plugin probe {ep.value}: its name {e.name!r} is taken by another probe"
        if error is not None:
            broken[ep.name] = error
            continue
        dist, version = distribution_of(ep)
        out[e.name] = dataclasses.replace(e, plugin=f"{dist or 'an unknown distribution'} {version or ''}".rstrip())
    return out, broken


PLUGIN_PROBES, BROKEN_PLUGINS = _plugin_probes()
PROBES.update(PLUGIN_PROBES)
PARAMS = {p for e in PROBES.values() for p in e.params}  # what `compute_run(params=...)` accepts
DEFAULT_PROBES = [name for name, e in PROBES.items() if e.default]  # what `lrprobe compute` runs unasked


def headlines() -> list[Headline]:
    """Every probe's headline variables, in the registry's order."""
    return [h for e in PROBES.values() for h in e.headline]
