"""Per-sample training dynamics, read from the minibatch log the training loop records.

Every step logs its minibatch's sample ids (``batch_index``, -1 = empty slot) and, before the
update, either their logits (``batch_logits``, float16: a store with ``log_logits="full"``) or
the summary record (``log_logits="summary"``: ``batch_true_logprob``, the log-probability of the
true class, and ``batch_correct``, both from the float32 logits; store/schema.py). Each training
sample is presented once per epoch
(an epoch is ``ceil(n_train / batch_size)`` steps), so the log holds, per sample, one prediction
per epoch for free: the Dataset-Cartography record (Swayamdipta et al. 2020) and the
example-forgetting record (Toneva et al. 2019).

Conventions (also in every result's attrs):

* a **presentation** is a log row in which the sample sits in the minibatch; its iteration is
  the row's iteration (the step that trained on it; the logits are from before that step's update);
* a presentation **has a prediction** when all its logits are finite (summary record: its
  log-probability is not NaN; its logits were checked in float32, before the float16 of the full
  record, which may overflow where float32 did not). One that does not (a
  diverging network: NaN, or an overflow of float16) is counted in ``dyn_presentations`` and
  otherwise skipped: it enters no mean, no correctness fraction and no transition (the same rule
  as ``group_accuracy``: no prediction is undefined, not wrong);
* **correct**: argmax of the logits equals the label (ties go to the lowest class index, as
  numpy's and torch's argmax; the full record's float16 logits, the summary's float32 ones);
* **confidence**: mean over the presentations with a prediction of p(y_true) = softmax(logits)_y;
  **variability**: its standard deviation over them, population form (ddof = 0, ``np.std`` as in
  allenai/cartography); **correctness**: the fraction of them that are correct. NaN for a sample
  without any prediction;
* **forgetting event**: a presentation that is wrong while the previous presentation with a
  prediction was correct (Toneva et al.); counts start from "not learned";
* **first learned**: the iteration of the first correct presentation; -1 when never correct
  (``dyn_never_learned``); **last mistake**: the iteration of the last wrong presentation; -1 when
  never wrong (as :func:`lrscope.probe.last_mistake`, which however counts NaN logits as -inf);
* **unforgettable**: learned (correct at least once) and never forgotten.

Memory and cost: the log is streamed in its stored chunks (256 iterations), one chunk read ahead
while the previous one is processed, each chunk in sub-blocks of at most ``BLOCK_ELEMS`` logit
values; the state kept is O(n_train) (running mean and M2 of p(y_true) in float64, counts, the
last correctness of each sample and its iterations) plus O(epochs) for the per-epoch curves.
Within one epoch a sample is presented at most once, so a block is folded in epoch by epoch with
vectorised gathers and scatters (Welford's update); a part of a log that repeats a sample within
an epoch is grouped by a stable sort instead (Chan et al.'s merge of the part's mean and M2).
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xarray as xr

from ..errors import StoreError

BLOCK_ELEMS = 1 << 22  # logit values handled at once: bounds the float32 temporaries (~16 MB each)
SMALL_CLASSES = 16  # up to this many classes, logits are handled class-major
NEVER = -1  # the iteration sentinel of dyn_first_learned / dyn_last_mistake
SUBSETS = ("all", "bias_aligned", "bias_conflicting")


def presentation_predictions(logits, y) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """What each presentation predicted, from its logged logits (m, classes) and labels (m,):
    ``(keep, p, correct)``: the positions with all logits finite (None: every one; the others have
    no prediction and are dropped), p(y_true) = softmax(logits)_y (computed in float32, returned
    as float64) and whether the argmax is y (ties to the lowest class) of those kept. The
    dynamics probe's rule, and the explorer's per-sample trajectories."""
    z = np.asarray(logits)
    ys = np.asarray(y, dtype=np.intp)
    # few classes: class-major (classes, m) float32, so that every reduction over the classes
    # is an elementwise operation over samples; many: sample-major
    small = z.shape[1] <= SMALL_CLASSES
    z = z.T.astype(np.float32, order="C") if small else z.astype(np.float32)
    finite = np.isfinite(z).all(0 if small else 1)
    keep = None
    if not finite.all():
        keep = np.flatnonzero(finite)
        z, ys = (z[:, keep] if small else z[keep]), ys[keep]
        if not len(keep):
            return keep, np.zeros(0), np.zeros(0, bool)
    ar = np.arange(len(ys))
    if small:
        mx = z.max(0)
        e = np.exp(z - mx)
        p = (e[ys, ar] / e.sum(0)).astype(np.float64)
        pred = np.full(len(ys), z.shape[0] - 1)
        for j in range(z.shape[0] - 2, -1, -1):  # argmax: the lowest class at the maximum
            pred[z[j] == mx] = j
    else:
        e = np.exp(z - z.max(1, keepdims=True))
        p = (e[ar, ys] / e.sum(1)).astype(np.float64)
        pred = z.argmax(1)
    return keep, p, pred == ys


class DynamicsState:
    """The O(n_train) running state of :func:`sample_dynamics`; ``update`` takes consecutive
    blocks of log rows in order."""

    def __init__(self, y, n_train: int, steps_per_epoch: int, bias_conflicting=None, n_iterations: int = 0):
        self.y = np.asarray(y).astype(np.int64)
        if self.y.shape != (n_train,):
            raise ValueError(f"y has shape {self.y.shape}, expected ({n_train},)")
        self.n = n = int(n_train)
        self.spe = int(steps_per_epoch)
        if self.spe < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.bc = (np.zeros(n, bool) if bias_conflicting is None else np.asarray(bias_conflicting).astype(bool))
        self.presentations = np.zeros(n, np.int64)
        self.predictions = np.zeros(n, np.int64)  # presentations with finite logits
        self.correct = np.zeros(n, np.int64)
        self.mean = np.zeros(n)  # running mean of p(y_true) over the predictions
        self.m2 = np.zeros(n)  # running sum of squared deviations from it
        self.last = np.full(n, -1, np.int8)  # the last prediction: -1 none yet, 0 wrong, 1 correct
        self.forgetting = np.zeros(n, np.int64)
        self.first_learned = np.full(n, NEVER, np.int64)
        self.last_mistake = np.full(n, NEVER, np.int64)
        n_epochs = -(-int(n_iterations) // self.spe)
        # per epoch, per bias-aligned (0) / bias-conflicting (1): predictions, correct, sum of p(y_true)
        self.epoch_predictions = np.zeros((n_epochs, 2), np.int64)
        self.epoch_correct = np.zeros((n_epochs, 2), np.int64)
        self.epoch_confidence = np.zeros((n_epochs, 2))
        self.rows = 0  # log rows seen so far (the next block starts at this iteration)
        self._stamp = np.zeros(n, np.int64)  # scratch for _distinct

    def update(self, index: np.ndarray, logits: np.ndarray | None = None, *, true_logprob: np.ndarray | None = None,
               correct: np.ndarray | None = None) -> None:
        """Fold in the next block of log rows: ``index`` (rows, slots) sample ids (-1 = empty), and
        either ``logits`` (rows, slots, classes) (a store with log_logits="full") or the summary
        record's ``true_logprob`` and ``correct`` (rows, slots) (log_logits="summary": a NaN
        log-probability is a presentation without a prediction)."""
        index = np.asarray(index)
        t0 = self.rows
        rows_in, slots = index.shape
        self.rows += rows_in
        flat = index.reshape(-1)
        valid = flat >= 0
        if valid.all():
            s, pos = flat.astype(np.intp), None
        else:
            pos = np.flatnonzero(valid)
            s = flat[pos].astype(np.intp)
        if not s.size:
            return
        if s.max() >= self.n:
            raise StoreError(f"batch_index holds sample id {int(s.max())} beyond the {self.n} training samples")
        np.add.at(self.presentations, s, 1)
        if logits is not None:
            z = np.asarray(logits).reshape(rows_in * slots, -1)
            s, pos, p, c = self._from_logits(s, pos, z if pos is None else z[pos])
        else:
            lp = np.asarray(true_logprob).reshape(-1)
            ok = np.asarray(correct).reshape(-1)
            if pos is not None:
                lp, ok = lp[pos], ok[pos]
            finite = np.isfinite(lp)
            if not finite.all():  # no prediction: counted as a presentation only
                keep = np.flatnonzero(finite)
                s, lp, ok = s[keep], lp[keep], ok[keep]
                pos = keep if pos is None else pos[keep]
            p, c = np.exp(lp.astype(np.float64)), ok.astype(bool)
        if not s.size:
            return
        t = t0 + (np.arange(len(s)) if pos is None else pos) // slots
        self._fold(s, t, p, c)

    def _from_logits(self, s, pos, z):
        """p(y_true) and correctness of the presentations `s` (at flat positions `pos`, None: all)
        from their logits `z` (m, classes); those without finite logits are dropped."""
        keep, p, c = presentation_predictions(z, self.y[s])
        if keep is not None:
            s = s[keep]
            pos = keep if pos is None else pos[keep]
        return s, pos, p, c

    def _fold(self, s, t, p, c) -> None:
        """Fold in presentations with a prediction: sample ids, iterations (time order), p(y_true)
        and correctness."""
        # per-epoch curves (rows are in time order; the epochs of a block are few)
        ep = t // self.spe
        if ep[-1] >= len(self.epoch_predictions):  # more rows than announced: grow
            grow = int(ep[-1]) + 1 - len(self.epoch_predictions)
            self.epoch_predictions = np.pad(self.epoch_predictions, ((0, grow), (0, 0)))
            self.epoch_correct = np.pad(self.epoch_correct, ((0, grow), (0, 0)))
            self.epoch_confidence = np.pad(self.epoch_confidence, ((0, grow), (0, 0)))
        e0 = int(ep[0])
        key = (ep - e0) * 2 + self.bc[s]
        size = (int(ep[-1]) - e0 + 1) * 2
        self.epoch_predictions[e0:int(ep[-1]) + 1] += np.bincount(key, minlength=size).reshape(-1, 2)
        self.epoch_correct[e0:int(ep[-1]) + 1] += \
            np.bincount(key, weights=c, minlength=size).reshape(-1, 2).astype(np.int64)
        self.epoch_confidence[e0:int(ep[-1]) + 1] += np.bincount(key, weights=p, minlength=size).reshape(-1, 2)

        # per sample, one epoch at a time: within an epoch each sample is presented at most once, so
        # the state updates are plain gathers and scatters; a part that repeats a sample (not written
        # by the training loop) goes through the general path, sorted by sample
        cuts = np.r_[0, np.flatnonzero(ep[1:] != ep[:-1]) + 1, len(s)]
        for a, b in itertools.pairwise(cuts):
            part = slice(int(a), int(b))
            if self._distinct(s[part]):
                self._fold_distinct(s[part], t[part], p[part], c[part])
            else:
                self._fold_sorted(s[part], t[part], p[part], c[part])

    def _distinct(self, s: np.ndarray) -> bool:
        """Whether no sample id repeats in `s`, in O(len(s)): positions written at the ids read back
        intact only when no two positions share an id."""
        pos = np.arange(len(s))
        self._stamp[s] = pos
        return bool((self._stamp[s] == pos).all())

    def _fold_distinct(self, s, t, p, c) -> None:
        """Presentations of distinct samples: Welford's update of mean and M2, one step each."""
        prev = self.last[s]
        self.forgetting[s] += (prev == 1) & ~c
        self.last[s] = c
        learned_now = c & (self.first_learned[s] == NEVER)
        self.first_learned[s[learned_now]] = t[learned_now]
        self.last_mistake[s[~c]] = t[~c]
        self.correct[s] += c
        k = self.predictions[s] + 1
        mean = self.mean[s]
        delta = p - mean
        mean += delta / k
        self.m2[s] += delta * (p - mean)
        self.mean[s] = mean
        self.predictions[s] = k

    def _fold_sorted(self, s, t, p, c) -> None:
        """Presentations in time order, samples possibly repeated: grouped by a stable sort by id."""
        order = np.argsort(s, kind="stable")
        ss, tt, pp, cc = s[order], t[order], p[order], c[order]
        starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        ends = np.r_[starts[1:], len(ss)] - 1
        u = ss[starts]
        nb = np.diff(np.r_[starts, len(ss)])
        # forgetting: correct at the previous prediction (from an earlier block at a segment's start), wrong now
        prev = np.empty(len(cc), np.int8)
        prev[1:] = cc[:-1]
        prev[starts] = self.last[u]
        self.forgetting[u] += np.add.reduceat(((prev == 1) & ~cc).astype(np.int64), starts)
        self.last[u] = cc[ends]
        first = np.minimum.reduceat(np.where(cc, tt, np.iinfo(np.int64).max), starts)
        learned_now = (self.first_learned[u] == NEVER) & (first != np.iinfo(np.int64).max)
        self.first_learned[u[learned_now]] = first[learned_now]
        wrong_last = np.maximum.reduceat(np.where(cc, NEVER, tt), starts)
        seen_wrong = wrong_last != NEVER
        self.last_mistake[u[seen_wrong]] = wrong_last[seen_wrong]  # later blocks hold later iterations
        self.correct[u] += np.add.reduceat(cc.astype(np.int64), starts)
        # mean and M2 of p(y_true): the block's own, merged into the running ones (Chan et al.)
        mb = np.add.reduceat(pp, starts) / nb
        dev = pp - np.repeat(mb, nb)
        m2b = np.add.reduceat(dev * dev, starts)
        na = self.predictions[u].astype(np.float64)
        nab = na + nb
        delta = mb - self.mean[u]
        self.mean[u] += delta * (nb / nab)
        self.m2[u] += m2b + delta * delta * (na * nb / nab)
        self.predictions[u] += nb

    def result(self) -> dict[str, np.ndarray]:
        """The per-sample quantities and the per-epoch sums (numpy arrays)."""
        has = self.predictions > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            pred = np.where(has, self.predictions, 1)
            confidence = np.where(has, self.mean, np.nan)
            variability = np.where(has, np.sqrt(np.maximum(self.m2, 0) / pred), np.nan)
            correctness = np.where(has, self.correct / pred, np.nan)
        learned = self.first_learned != NEVER
        return {
            "presentations": self.presentations.copy(), "predictions": self.predictions.copy(),
            "confidence": confidence, "variability": variability, "correctness": correctness,
            "forgetting_events": self.forgetting.copy(), "first_learned": self.first_learned.copy(),
            "last_mistake": self.last_mistake.copy(), "never_learned": ~learned,
            "unforgettable": learned & (self.forgetting == 0),
            "epoch_predictions": self.epoch_predictions.copy(), "epoch_correct": self.epoch_correct.copy(),
            "epoch_confidence_sum": self.epoch_confidence.copy(),
        }


def _row_blocks(x) -> list[tuple[int, int]]:
    """The stored chunks of a (dask) array along its first dim; one block for a numpy array."""
    n = x.shape[0]
    chunks = getattr(x, "chunks", None)
    if chunks is None or not isinstance(chunks[0], tuple):
        return [(0, n)] if n else []
    bounds = np.r_[0, np.cumsum(chunks[0])]
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


def unwrap_record(x):
    return x.data if isinstance(x, xr.DataArray) else x


def stream_log(arrays: list, block_rows: int):
    """Yield blocks of rows of `arrays` (numpy or dask, sharing their first dim) as numpy
    arrays: dask arrays one stored chunk (of the first array) at a time, the next chunk read on
    a thread while this one is processed, each chunk cut into blocks of at most `block_rows`."""
    import dask

    arrays = [unwrap_record(x) for x in arrays]
    lazy = any(hasattr(x, "dask") for x in arrays)
    blocks = _row_blocks(arrays[-1])

    def read(a: int, b: int):
        if lazy:
            return dask.compute(*(x[a:b] for x in arrays))
        return tuple(np.asarray(x[a:b]) for x in arrays)

    with ThreadPoolExecutor(1, thread_name_prefix="lrscope-log-read") as reader:
        nxt = reader.submit(read, *blocks[0]) if blocks else None
        for k, (a, b) in enumerate(blocks):
            got = nxt.result()
            nxt = reader.submit(read, *blocks[k + 1]) if k + 1 < len(blocks) else None
            for r in range(0, b - a, block_rows):
                yield tuple(x[r:r + block_rows] for x in got)


def log_record(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """The minibatch record of a run Dataset (``lrscope.open_run``), under the keywords of
    :func:`sample_dynamics`: ``batch_logits`` for a store with log_logits="full" (and every
    store written before the policy existed), ``batch_true_logprob`` and ``batch_correct`` for a
    summary store."""
    from ..store import schema as S

    if ds.attrs.get(S.ATTR_LOG_LOGITS, S.LOG_FULL) == S.LOG_SUMMARY:
        return {"batch_true_logprob": ds[S.A_BATCH_TRUE_LOGPROB], "batch_correct": ds[S.A_BATCH_CORRECT]}
    return {"batch_logits": ds[S.A_BATCH_LOGITS]}


def sample_dynamics(batch_index, batch_logits=None, y=None, n_train: int | None = None, *,
                    steps_per_epoch: int | None = None, bias_conflicting=None, block_rows: int | None = None,
                    batch_true_logprob=None, batch_correct=None) -> dict[str, np.ndarray]:
    """Per-sample training dynamics from the minibatch log, streamed over iterations.

    batch_index: (iteration, batch_slot) sample ids, -1 for empty slots; the record of each slot,
    either batch_logits: (iteration, batch_slot, class) logits of each minibatch sample at the
    step it was trained on (a store with log_logits="full"), or the summary's
    batch_true_logprob (log p(y | x); NaN: no prediction) and batch_correct (iteration,
    batch_slot) (log_logits="summary"); numpy or dask arrays (xarray DataArrays are unwrapped).
    Dask arrays are read one chunk of iterations at a time, the next one read while this one is
    processed; ``block_rows`` caps the rows processed at once (default: as many as hold
    ``BLOCK_ELEMS`` values; never more than one chunk), so memory stays O(n_train + chunk) however
    long the run. y: (n_train,) labels; steps_per_epoch: default ceil(n_train / batch_slots);
    bias_conflicting: (n_train,) bools, splits the per-epoch sums (column 0 aligned, 1 conflicting).

    Returns numpy arrays over the training samples: ``presentations``, ``predictions``
    (presentations with finite logits), ``confidence``, ``variability``, ``correctness``,
    ``forgetting_events``, ``first_learned``, ``last_mistake`` (-1 = never), ``never_learned``,
    ``unforgettable``; and per epoch × (aligned, conflicting): ``epoch_predictions``,
    ``epoch_correct``, ``epoch_confidence_sum``. Conventions: this module's docstring.
    """
    bi = unwrap_record(batch_index)
    if y is None or n_train is None:
        raise TypeError("sample_dynamics needs y and n_train")
    if batch_logits is not None:
        bl = unwrap_record(batch_logits)
        if bi.ndim != 2 or bl.ndim != 3 or bl.shape[:2] != bi.shape:
            raise ValueError(f"batch_index {bi.shape} and batch_logits {bl.shape} do not match")
        record, per_slot = [bl], bl.shape[2]
    else:
        if batch_true_logprob is None or batch_correct is None:
            raise TypeError("sample_dynamics needs batch_logits, or batch_true_logprob and batch_correct")
        lp, ok = unwrap_record(batch_true_logprob), unwrap_record(batch_correct)
        if bi.ndim != 2 or lp.shape != bi.shape or ok.shape != bi.shape:
            raise ValueError(f"batch_index {bi.shape}, batch_true_logprob {lp.shape} and batch_correct {ok.shape} "
                             "do not match")
        record, per_slot = [lp, ok], 1
    n_it, slots = bi.shape
    if steps_per_epoch is None:
        steps_per_epoch = max(1, math.ceil(n_train / max(1, slots)))
    state = DynamicsState(y, n_train, steps_per_epoch, bias_conflicting, n_it)
    if block_rows is None:
        block_rows = max(1, BLOCK_ELEMS // max(1, slots * per_slot))
    for block in stream_log([bi, *record], max(1, int(block_rows))):
        if batch_logits is not None:
            state.update(block[0], block[1])
        else:
            state.update(block[0], true_logprob=block[1], correct=block[2])
    return state.result()


# ------------------------------------------------------------------------------- labelled
def _var(values, dims, long_name: str, description: str, units: str | None = None, **extra) -> xr.DataArray:
    attrs = {"long_name": long_name, "description": description, **extra}
    if units:
        attrs["units"] = units
    return xr.DataArray(values, dims=dims, attrs=attrs)


def _summaries(r: dict[str, np.ndarray], masks: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per mask of samples: the means over the samples of the mask that have a prediction."""
    out = {k: [] for k in ("samples", "confidence", "variability", "correctness", "forgetting_events",
                           "never_learned", "unforgettable", "first_learned_median", "last_mistake_median")}
    seen_all = r["predictions"] > 0
    for m in masks:
        seen = m & seen_all
        n = int(seen.sum())
        out["samples"].append(n)
        for k in ("confidence", "variability", "correctness", "forgetting_events", "never_learned", "unforgettable"):
            out[k].append(float(r[k][seen].astype(np.float64).mean()) if n else np.nan)
        for k, src in (("first_learned_median", "first_learned"), ("last_mistake_median", "last_mistake")):
            v = r[src][seen & (r[src] != NEVER)]
            out[k].append(float(np.median(v)) if len(v) else np.nan)
    return {k: np.asarray(v) for k, v in out.items()}


_SUMMARY_ATTRS = {  # name: (long_name, units, description)
    "samples": ("samples with a prediction", "count",
                "training samples of the set with at least one presentation with finite logits "
                "(the summaries are over these)"),
    "confidence": ("mean confidence", "probability",
                   "mean over samples of the per-sample confidence (mean p(y_true) over presentations)"),
    "variability": ("mean variability", "probability", "mean over samples of the std of p(y_true) over presentations"),
    "correctness": ("mean correctness", "fraction",
                    "mean over samples of the fraction of presentations classified correctly"),
    "forgetting_events": ("mean forgetting events", "count",
                          "mean over samples of the correct-to-wrong transitions between presentations"),
    "never_learned": ("fraction never learned", "fraction",
                      "share of samples never classified correctly at a presentation"),
    "unforgettable": ("fraction unforgettable", "fraction",
                      "share of samples learned and never forgotten (Toneva et al. 2019)"),
    "first_learned_median": ("median first-learned iteration", "iteration",
                             "median over the learned samples of the iteration of their first correct "
                             "presentation"),
    "last_mistake_median": ("median last-mistake iteration", "iteration",
                            "median over the samples ever misclassified of the iteration of their last wrong "
                            "presentation"),
}

CONVENTIONS = ("presentation = a log row with the sample in its minibatch (logits before that step's update); "
               "a presentation with non-finite logits has no prediction: counted in dyn_presentations, skipped "
               "otherwise; correct = argmax == label (ties to the lowest class); confidence/variability = "
               "mean/population std (ddof=0) of softmax p(y_true) over presentations with a prediction; forgetting "
               "event = wrong after a correct previous prediction; first_learned / last_mistake = iteration of the "
               "first correct / last wrong presentation, -1 = never; unforgettable = learned and never forgotten; "
               "summaries over samples with a prediction")


def dynamics(ds: xr.Dataset, *, block_rows: int | None = None) -> xr.Dataset:
    """The ``dynamics`` probe of a run Dataset (``lrscope.open_run``): per training sample
    (dim ``train_sample``) the Dataset-Cartography and example-forgetting statistics of its
    presentations in the minibatch log; their summaries over ``subset`` (all, bias-aligned,
    bias-conflicting) and over ``group`` (the stored (y, b) group id, ``train_group``); and per
    ``epoch`` the fraction correct and mean confidence of the presentations, per subset.
    Conventions: :mod:`lrscope.probe.dynamics`."""
    n = ds.sizes["train_sample"]
    y = ds.train_y.values
    bc = ds.train_bias_conflicting.values.astype(bool)
    group = ds.train_group.values.astype(np.int64)
    slots = ds.sizes["batch_slot"]
    spe = max(1, math.ceil(n / max(1, slots)))
    r = sample_dynamics(ds.batch_index, y=y, n_train=n, steps_per_epoch=spe, bias_conflicting=bc,
                        block_rows=block_rows, **log_record(ds))
    ts = ("train_sample",)
    out = xr.Dataset({
        "dyn_presentations": _var(r["presentations"], ts, "presentations",
                                  "log rows in which the sample was in the minibatch", "count"),
        "dyn_predictions": _var(r["predictions"], ts, "presentations with a prediction",
                                "presentations whose logits were all finite (the others have no prediction)", "count"),
        "dyn_confidence": _var(r["confidence"].astype(np.float32), ts, "confidence",
                               "mean over presentations of softmax p(y_true) (Swayamdipta et al. 2020); "
                               "NaN: no prediction",
                               "probability"),
        "dyn_variability": _var(r["variability"].astype(np.float32), ts, "variability",
                                "population std (ddof=0) over presentations of softmax p(y_true); NaN: no prediction",
                                "probability"),
        "dyn_correctness": _var(r["correctness"].astype(np.float32), ts, "correctness",
                                "fraction of presentations with argmax == label; NaN: no prediction", "fraction"),
        "dyn_forgetting_events": _var(r["forgetting_events"], ts, "forgetting events",
                                      "presentations classified wrongly after a correct previous one "
                                      "(Toneva et al. 2019)",
                                      "count"),
        "dyn_first_learned": _var(r["first_learned"], ts, "first-learned iteration",
                                  "iteration of the first correct presentation; -1: never learned", "iteration",
                                  sentinel=NEVER),
        "dyn_last_mistake": _var(r["last_mistake"], ts, "last-mistake iteration",
                                 "iteration of the last wrong presentation; -1: never wrong", "iteration",
                                 sentinel=NEVER),
        "dyn_never_learned": _var(r["never_learned"], ts, "never learned",
                                  "never classified correctly at a presentation"),
        "dyn_unforgettable": _var(r["unforgettable"], ts, "unforgettable",
                                  "learned (correct at least once) and never forgotten (Toneva et al. 2019)"),
    })
    for dim, labels, masks in (
            ("subset", list(SUBSETS), [np.ones(n, bool), ~bc, bc]),
            ("group", np.unique(group), [group == g for g in np.unique(group)])):
        summ = _summaries(r, masks)
        for k, (long, units, desc) in _SUMMARY_ATTRS.items():
            per = "per subset (all, bias-aligned, bias-conflicting)" if dim == "subset" else "per (y, b) group"
            out[f"dyn_{dim}_{k}"] = _var(summ[k], (dim,), f"{long} {per}", desc, units)
        out = out.assign_coords({dim: labels})
    n_ep = len(r["epoch_predictions"])
    cnt = r["epoch_predictions"]
    cnt3 = np.stack([cnt.sum(1), cnt[:, 0], cnt[:, 1]], 1)
    cor3 = np.stack([r["epoch_correct"].sum(1), r["epoch_correct"][:, 0], r["epoch_correct"][:, 1]], 1)
    con = r["epoch_confidence_sum"]
    con3 = np.stack([con.sum(1), con[:, 0], con[:, 1]], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(cnt3 > 0, cor3 / np.maximum(cnt3, 1), np.nan)
        conf = np.where(cnt3 > 0, con3 / np.maximum(cnt3, 1), np.nan)
    ed = ("epoch", "subset")
    out["dyn_epoch_predictions"] = _var(cnt3, ed, "presentations with a prediction per epoch", "per subset", "count")
    out["dyn_epoch_correct"] = _var(frac, ed, "fraction correct per epoch",
                                    "fraction of the epoch's presentations (with a prediction) classified "
                                    "correctly, per subset",
                                    "fraction")
    out["dyn_epoch_confidence"] = _var(conf, ed, "mean confidence per epoch",
                                       "mean softmax p(y_true) of the epoch's presentations (with a prediction), "
                                       "per subset",
                                       "probability")
    out["dyn_epoch_first_iteration"] = _var(np.arange(n_ep, dtype=np.int64) * spe, ("epoch",),
                                            "first iteration of the epoch",
                                            f"an epoch is {spe} steps; the last one may be partial", "iteration")
    out = out.assign_coords(epoch=np.arange(n_ep))
    out.attrs.update({"steps_per_epoch": spe, "conventions": CONVENTIONS, "iteration_sentinel": NEVER})
    return out


def probe_dynamics(ctx) -> xr.Dataset:
    """Per-sample training dynamics from the minibatch log (Dataset Cartography, forgetting), BA/BC and group summaries.

    Confidence, variability, correctness, forgetting events, first-learned and last-mistake
    iterations per training sample; their summaries per subset and group; per-epoch curves.

    Dataset Cartography (Swayamdipta et al. 2020) and example forgetting (Toneva et al. 2019) read
    from ``log/batch_index`` and the minibatch record (``log/batch_logits``, or the summary's
    ``batch_true_logprob`` and ``batch_correct``), streamed chunk by chunk (see
    :mod:`lrscope.probe.dynamics` for the conventions). Defined on diverged runs: presentations
    with non-finite logits have no prediction."""
    from .context import NO_BIAS, has_bias

    out = dynamics(ctx.ds)
    if not has_bias(ctx.ds):  # computed all the same: the split by a placeholder b = y is trivial
        out.attrs["not_defined"] = (f"the bias-aligned / bias-conflicting subsets: {NO_BIAS} (bias-aligned is "
                                    f"every sample, bias-conflicting none; group is the class)")
    return out
