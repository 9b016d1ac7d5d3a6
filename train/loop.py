"""The training loop: data batched by index (held on the device, in host memory or memory-mapped:
train/placement.py), recording into a run store.

Per step the loop only keeps references to the minibatch logits and two fused norms
(``torch._foreach_norm``); sample ids come from the epoch permutation, and losses, accuracy,
bias-conflicting/aligned loss sums and logit norms are derived on the host once per epoch,
vectorised. Log rows and snapshots are buffered in memory and written to Zarr in blocks at
checkpoints (what follows the last checkpoint is dropped by a resume anyway), every 20 s, or
when the buffer passes 256 MB. Divergence (a non-finite loss) is a result: status ``diverged``, store intact.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, LrscopeError, StoreError
from ..store import schema as S
from ..store.lock import RunLock
from ..store.nesting import check_not_in_store
from ..store.reader import half_created, open_store, store_exists
from ..store.writer import RunWriter, set_attrs
from .config import RunConfig, check_run_id
from .data import DataBundle, Split, as_model_input, build_dataset, probe_subset
from .optim import (
    RANDOM_OPTIMIZERS,
    load_optimizer,
    make_optimizer,
    mean_cross_entropy,
    optimizer_arrays,
    per_sample_loss_np,
)
from .placement import PLACED_TEXT, Placed, choose, dataset_bytes
from .plugins import check_run, is_import_path, run_provenance
from .recorder import Recorder, RunResult, is_recording_point, recording_errors
from .restore import build_model, check_on_data, fcn_widths, parameter_names, state_arrays
from .step import Step

EVAL_BATCH = 4096
CHECK_SAMPLES = 4  # a plugin model is checked on this many training inputs before its store is created
STOCHASTIC_MODULES = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
                      "StochasticDepth")
TRAIN_LOGITS_BUDGET = 0.02  # "auto": train logits at full snapshots when a pass costs <= 2% of the interval


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def is_light_snapshot(t: int, cfg: RunConfig) -> bool:
    """The early log-spaced snapshots (not 0, not multiples of snapshot_every) are light: probe
    subset only, unless early_snapshots="full"."""
    return cfg.early_snapshots == "light" and t != 0 and t % cfg.snapshot_every != 0




SUMMARY_BLOCK_ELEMS = 1 << 22  # logit values summarised at once: bounds the float64 temporaries (~32 MB each)


def minibatch_summary(logits: np.ndarray, y: np.ndarray, valid: np.ndarray, loss: np.ndarray,
                      correct: np.ndarray) -> dict[str, np.ndarray]:
    """The summary minibatch record (log_logits="summary", store/schema.py) of a block of steps:
    logits (rows, slots, classes) float32, y and the `valid` slots (rows, slots), the per-sample
    `loss` and `correct` the log's statistics already computed from the same logits. The true-class
    log-probability is -log1p(sum_{j != y} exp(z_j - z_y)) in float64, exact as p -> 1 (where
    1 - p, the importance weight, is tiny); empty slots and non-finite logits hold NaN (no
    prediction), `correct` False."""
    rows, slots, c = logits.shape
    out = {name: np.empty((rows, slots), dtype=dtype) for name, (dtype, _) in S.SUMMARY_ARRAYS.items()}
    out[S.A_BATCH_LOSS][...] = np.where(valid, loss, np.nan)
    out[S.A_BATCH_CORRECT][...] = correct & valid
    step = max(1, SUMMARY_BLOCK_ELEMS // max(1, slots * c))
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for r in range(0, rows, step):
            part = slice(r, r + step)
            z = logits[part].astype(np.float64)
            yy = y[part][..., None]
            finite = valid[part] & np.isfinite(z).all(-1)
            out[S.A_BATCH_TRUE_LOGIT][part] = np.where(valid[part], np.take_along_axis(z, yy, -1)[..., 0], np.nan)
            z[~finite] = 0.0
            zy = np.take_along_axis(z, yy, -1)
            other = np.arange(c) != yy
            m = z.max(-1, keepdims=True)
            # sum_{j != y} exp(z_j - z_y) cannot overflow while z_y is within 700 of the largest logit;
            # beyond that, log p = z_y - logsumexp(z)
            rel = np.where(other, np.exp(np.minimum(z - zy, 700.0)), 0.0).sum(-1)
            lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]
            logp = np.where((m - zy)[..., 0] < 700.0, -np.log1p(rel), zy[..., 0] - lse)
            best_other = np.where(other, z, -np.inf).max(-1)  # -inf with one class: no other logit
            out[S.A_BATCH_TRUE_LOGPROB][part] = np.where(finite, logp, np.nan)
            out[S.A_BATCH_MARGIN][part] = np.where(finite, zy[..., 0] - best_other, np.nan)
    return out


def store_path(out: str | os.PathLike, run_id: str) -> Path:
    return Path(out) / f"{check_run_id(run_id)}.zarr"


# ----------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def evaluate(model: torch.nn.Module, x, features: bool = False, batch: int = EVAL_BATCH):
    """Logits (and penultimate features) for all of `x` (a device tensor, or host or mapped data:
    `placement.HostData`), kept on the device, in big batches."""
    was_training = model.training
    model.eval()
    logits, feats = [], []
    tapped = hasattr(model, "features_and_logits")  # a plugin model (TappedNet): its own forward, features read
    for xb in (x.split(batch) if isinstance(x, torch.Tensor) else x.chunks(batch)):
        if tapped:
            f, z = model.features_and_logits(as_model_input(xb)) if features else (None, model(as_model_input(xb)))
            logits.append(z)
        else:
            f = model.forward_features(as_model_input(xb))
            logits.append(model.forward_head(f))
        if features:
            feats.append(f)
    model.train(was_training)
    out = torch.cat(logits).float()  # bf16 autocast: back to fp32 for the host and the store
    return (out, torch.cat(feats).float()) if features else out


# ----------------------------------------------------------------------------- the loop
class _StopFlag:
    """SIGTERM/SIGINT between steps: checkpoint cleanly, then stop (pre-emption friendly)."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(sig) is signal.SIG_IGN:  # a sweep's pool worker: its parent forwards SIGTERM
                    continue
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def locked_output(out, path: Path) -> RunLock:
    """The output folder `out` made (never inside a store: `check_not_in_store`) and the lock of
    the run store `path` in it taken: what every writer of a run does first (`train_run`, the
    public `Recorder`). One-line LrscopeErrors for a folder that cannot be made or written."""
    check_not_in_store(out)
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LrscopeError(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise LrscopeError(f"output folder {out} is not writable")
    lock = RunLock(path)
    try:
        lock.acquire()
    except OSError as e:
        raise LrscopeError(f"cannot write in {out}: {e.strerror}") from None
    return lock


def train_run(cfg: RunConfig, out: str | os.PathLike, *, run_id: str | None = None, progress: bool = True,
              data: DataBundle | None = None) -> RunResult:
    """Train one run into ``<out>/<run_id>.zarr``; resume it if interrupted; no-op if finished."""
    cfg.validate()
    path = store_path(out, run_id or cfg.run_id())
    lock = locked_output(out, path)
    prev = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if cfg.deterministic:  # before any CUDA work; cuBLAS needs its workspace setting for determinism
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        return _train_locked(cfg, path, progress, data, lock)
    finally:
        torch.use_deterministic_algorithms(prev[0])
        torch.backends.cudnn.benchmark = prev[1]
        lock.release()


def _train_locked(cfg: RunConfig, path: Path, progress: bool, data: DataBundle | None, lock: RunLock) -> RunResult:
    resume = store_exists(path)
    if resume and half_created(path):
        shutil.rmtree(path)
        resume = False
    if resume:
        root = open_store(path)
        attrs = root.attrs.asdict()
        stored = RunConfig.from_stored(attrs[S.ATTR_CONFIG])
        if stored.identity() != cfg.identity():
            diff = [k for k, v in cfg.identity().items() if stored.identity().get(k) != v]
            raise ConfigError(f"{path} holds a run with a different config ({', '.join(diff)}); "
                              "choose another --out or --name")
        if attrs[S.ATTR_STATUS] in S.FINISHED:
            status, reason = attrs[S.ATTR_STATUS], attrs.get(S.ATTR_REASON, "")
            return RunResult(path, status, f"{path.name}: already {status} ({reason}); nothing to do",
                             attrs[S.ATTR_COMMITTED]["iteration"], skipped=True)
        for kind in ("model", "dataset"):  # a plugin edited since the run started: not resumed with it
            check_run(attrs, kind, hint="restore it to resume this run, or train a new one (--name or --out)")
        if attrs[S.ATTR_COMMITTED]["checkpoint"] < 1:  # crashed before its first checkpoint
            resume = False
    elif path.exists() and any(path.iterdir()):
        raise StoreError(f"{path} exists and is not a run store; refusing to overwrite it")

    device = pick_device(cfg.device)
    bundle = data if data is not None else build_dataset(
        cfg.dataset, seed=cfg.data_seed, bias_conflicting_ratio=cfg.bias_conflicting_ratio,
        data_root=cfg.data_root, val_fraction=cfg.val_fraction, **cfg.data_options)
    n_classes = bundle.num_classes
    torch.manual_seed(cfg.seed)
    # a resumed run is rebuilt as it was created (its recorded widths), a new one as fcn_widths says
    stored_info = (attrs.get(S.ATTR_MODEL_INFO) or {}) if resume else None
    model = build_model(cfg, bundle.input_shape, n_classes, model_info=stored_info)
    widths, why = fcn_widths(cfg, stored_info)
    if progress and widths is not None and cfg.widths is None and not resume:
        print(f"{path.name}: fcn hidden widths {','.join(map(str, widths))} ({why}; --widths to choose others)",
              file=sys.stderr, flush=True)
    if cfg.weights and not resume:
        from .models import load_weights

        load_weights(model, cfg.weights)
    model = model.to(device)
    check_on_data(model, cfg, bundle.train.x[:CHECK_SAMPLES], n_classes)  # a plugin model: before any write
    opt = make_optimizer(cfg, model.parameters())
    probe_idx = probe_subset(bundle, cfg.probe_size, cfg.data_seed)
    nbytes = dataset_bytes(bundle)
    placement = choose(cfg.data_placement, nbytes, device)

    if resume:
        writer = RunWriter.resume(path, lock)
        k = writer.committed["checkpoint"] - 1
        reader = open_store(path)  # checksummed reads: a damaged checkpoint is an error, not weights
        params = reader[S.G_PARAMS]
        model.load_state_dict({n: torch.from_numpy(np.asarray(params[n][k])) for n in model.state_dict()})
        slot = reader[S.G_OPTIM].get(str(k % S.OPTIM_SLOTS))
        keys = writer.optim_keys.get(str(k % S.OPTIM_SLOTS), [])
        if keys:
            load_optimizer(opt, {n: np.asarray(slot[n][...]) for n in keys}, device)
        start = writer.committed["iteration"]
        if progress:
            print(f"{path.name}: resuming from iteration {start} (checkpoint {k})", file=sys.stderr, flush=True)
        set_attrs(writer.root, {S.ATTR_DATA_PLACEMENT: placement})  # this session's
    else:
        try:
            writer = create_store(path, cfg, bundle, model, probe_idx, device, lock, placement)
        except OSError as e:
            raise LrscopeError(f"cannot create {path}: {e.strerror or e}") from None
        start = 0
    if progress:
        print(f"{path.name}: training on {device}; data ({nbytes / 2**20:.1f} MiB) {PLACED_TEXT[placement]} "
              f"(data placement {placement}, asked: {cfg.data_placement})", file=sys.stderr, flush=True)
        if cfg.batch_size > len(bundle.train):  # documented: the minibatch is the whole training split
            print(f"{path.name}: batch size {cfg.batch_size} > the {len(bundle.train)} training samples: each step "
                  f"takes the whole training split (full-batch)", file=sys.stderr, flush=True)
    placed = Placed(bundle, placement, device)
    try:
        try:
            trainer = Trainer(cfg, bundle, model, opt, writer, device, probe_idx, placed=placed)
        except OSError as e:
            raise LrscopeError(f"{path.name}: could not prepare the store ({e.strerror or e})") from None
        result = trainer.run(start, progress)
    finally:
        placed.close()
    if resume:
        result.resumed_from = start
    return result


def create_store(path, cfg, bundle, model, probe_idx, device, lock, placement: str, *,
                 config: dict | None = None, extra_info: dict | None = None) -> RunWriter:
    """A new run store for `cfg` (stored as `config` when given: the public API's config, the
    RunConfig's fields plus the user's own keys) with the `extra_info` entries in its model_info."""
    labels = {}
    for split_name in bundle.splits:  # train, test and the validation split where there is one
        split = getattr(bundle, split_name)
        labels[split_name] = _label_arrays(bundle, split, np.arange(len(split)))
    labels["probe"] = _label_arrays(bundle, bundle.test, probe_idx)
    model_info = {"input_shape": list(bundle.input_shape), "num_classes": bundle.num_classes,
                  "num_bias": bundle.num_bias, "num_features": int(model.num_features),
                  "dataset_description": bundle.description,
                  # the probes that read weights (compressibility) find them without rebuilding the model
                  "parameter_names": parameter_names(model), **(extra_info or {})}
    if cfg.model == "fcn":  # the hidden widths it was built with: rebuilt the same whatever defaults become
        model_info["widths"] = [int(m.out_features) for m in model.features if isinstance(m, torch.nn.Linear)]
    if is_import_path(cfg.model):
        from .models import entry

        model_info["features_at"] = cfg.features_at
        model_info["signed_features"] = entry(cfg.model).signed_features
    plugins = run_provenance(cfg.to_dict())  # import path, distribution, version, source sha256
    w = RunWriter.create(
        path, run_id=path.stem, config=cfg.to_dict() if config is None else config, labels=labels, plugins=plugins,
        probe_inputs=bundle.test.x[probe_idx].numpy(), probe_test_index=probe_idx,
        regions=bundle.regions, model_info=model_info, params=state_arrays(model),
        batch_size=min(cfg.batch_size, len(bundle.train)), num_classes=bundle.num_classes, device=str(device),
        log_logits=S.resolve_log_logits(cfg.log_logits, bundle.num_classes), lock=lock, has_bias=bundle.has_bias)
    set_attrs(w.root, {S.ATTR_DATA_PLACEMENT: placement})  # beside `device`: where the data lived
    return w



def _label_arrays(bundle: DataBundle, split: Split, pos: np.ndarray) -> dict[str, np.ndarray]:
    y, b = split.y.numpy()[pos], split.b.numpy()[pos]
    return {"y": y, "b": b, "bias_conflicting": y != b, "group": y * bundle.num_bias + b,
            "index": split.index.numpy()[pos]}


class Trainer:
    """Runs the optimisation. Per step it only keeps references: the minibatch logits (detached)
    and the two fused norm results; ids come from the epoch permutation, losses and all other
    statistics are derived on the host once per block of steps (an epoch, or MAX_BLOCK_ROWS)."""

    def __init__(self, cfg, bundle, model, opt, writer: RunWriter, device, probe_idx, placed: Placed | None = None):
        self.cfg, self.model, self.opt, self.writer, self.device = cfg, model, opt, writer, device
        self.bundle = bundle
        # the data: device tensors, or host / mapped data served batch by batch (train/placement.py)
        self.placed = placed if placed is not None else Placed(bundle, "device", device)
        self.X, self.Xt, self.Y = self.placed.train, self.placed.test, self.placed.Y
        self.Xv = self.placed.val  # the validation split's inputs (None: the run has none)
        self.Xp = self.placed.take_test(probe_idx)
        self.n = len(self.Y)
        self.bs = min(cfg.batch_size, self.n)
        self.steps_per_epoch = math.ceil(self.n / self.bs)
        # host copies of labels for the per-block statistics
        self.y_np = bundle.train.y.numpy()
        self.bc_np = (bundle.train.y != bundle.train.b).numpy()
        # cost model: a forward pass over n samples ~ n / (3 * batch) training steps (fwd + bwd ~ 3 fwd)
        train_pass_steps = self.n / (3 * self.bs)
        self.train_logits_every_snapshot = cfg.train_logits == "always" or (
            cfg.train_logits == "auto" and train_pass_steps <= TRAIN_LOGITS_BUDGET * cfg.snapshot_every)
        self.channels_last = cfg.channels_last and len(bundle.input_shape) == 3
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # stochastic layers (Swin-T's stochastic depth, dropout) draw from torch's global RNG: it is
        # reseeded from (seed, iteration) before each such step, so a resumed run draws what an
        # uninterrupted one would (models without them are untouched); likewise PSGD-Kron's probe vectors
        self.stochastic = (any(type(m).__name__ in STOCHASTIC_MODULES for m in model.modules())
                           or cfg.optimizer in RANDOM_OPTIMIZERS)
        # the optimizer step (train/step.py); a batched run's steps are its stack's (train/batched.py)
        self.stepper = Step(cfg, model, opt, amp=self.amp, channels_last=self.channels_last,
                            stochastic=self.stochastic)
        self._logits: list[torch.Tensor] = []
        self._norms: list[torch.Tensor] = []  # per step: a vector of the grads' norms, then the params'
        self.perm_cpu: torch.Tensor | None = None
        self._perms: dict[int, torch.Tensor] = {}

    def keep(self, logits: torch.Tensor, norms: torch.Tensor) -> None:
        """Keep one step's references for the recorder: its minibatch logits and its norms (each
        gradient's, then each weight tensor's), until the next recording point (`block`)."""
        self._logits.append(logits)
        self._norms.append(norms)

    def drop(self) -> None:
        """Forget the kept steps (as `block` does once it has read them)."""
        self._logits, self._norms = [], []

    def perm(self, epoch: int) -> torch.Tensor:
        """The minibatch order of an epoch (CPU): a pure function of (seed, epoch), so resumes
        replay it."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def epoch_perm(self, epoch: int) -> torch.Tensor:
        """The epoch's order on the device; kept on the host for the statistics (`perm_cpu`)."""
        self.perm_cpu = self.perm(epoch)
        return self.perm_cpu.to(self.device) if self.placed.on_device else self.perm_cpu

    def order(self, t: int) -> torch.Tensor:
        """Step t's sample positions (CPU): the host feeder's view of the order, kept apart from
        `perm_cpu` (it runs a step ahead, into the next epoch)."""
        epoch, pos = divmod(t, self.steps_per_epoch)
        cache = self._perms
        if epoch not in cache:
            if len(cache) > 1:
                cache.pop(min(cache))
            cache[epoch] = self.perm(epoch)
        return cache[epoch][pos * self.bs:(pos + 1) * self.bs]

    # -------------------------------------------------------------------- recording
    def amp(self):
        """bf16 autocast for forward passes when asked for (weights, grads, optimizer stay fp32);
        fp32 gets a no-op context (a disabled torch.autocast still costs a few µs per step)."""
        if self.cfg.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def snapshot(self, t: int, final: bool = False) -> None:
        """Evaluate and buffer a snapshot. Light snapshots (the early log-spaced ones, by default)
        record only the probe subset; full ones add the whole test split, and the train split
        where that is cheap (or at the final snapshot)."""
        full = final or not is_light_snapshot(t, self.cfg)
        with self.amp():
            logits, feats = evaluate(self.model, self.Xp, features=True)
            test_logits = evaluate(self.model, self.Xt).cpu().numpy() if full else None
            val_logits = evaluate(self.model, self.Xv).cpu().numpy() if full and self.Xv is not None else None
            train_logits = None
            if final or (full and self.train_logits_every_snapshot):
                train_logits = evaluate(self.model, self.X).cpu().numpy()
        self.writer.write_snapshot(t, probe_features=feats.cpu().numpy(), probe_logits=logits.cpu().numpy(),
                                   test_logits=test_logits, train_logits=train_logits, val_logits=val_logits)

    def checkpoint(self, t: int) -> None:
        self.writer.write_checkpoint(t, state_arrays(self.model), optimizer_arrays(self.opt))

    def block(self, t0: int, t: int) -> tuple[dict[str, np.ndarray], int, int]:
        """The recorder's view of steps t0..t-1: their log rows, correct and presented counts."""
        return self.epoch_rows(t0, t - t0, self.cfg.lr_at(np.arange(t0, t)))

    def epoch_rows(self, t0: int, rows: int, lr) -> tuple[dict[str, np.ndarray], int, int]:
        """Host-side statistics for the `rows` steps since iteration t0 (all within one epoch)."""
        bs, c = self.bs, self.bundle.num_classes
        pos0 = t0 % self.steps_per_epoch
        flat_idx = self.perm_cpu[pos0 * bs:(pos0 + rows) * bs].numpy()
        flat_logits = torch.cat(self._logits).float().cpu().numpy()
        norms = torch.stack(self._norms).reshape(rows, -1).double().cpu().numpy()
        k = len(self.params)
        gn = np.sqrt((norms[:, :-k] ** 2).sum(1))
        pn = np.sqrt((norms[:, -k:] ** 2).sum(1))
        self._logits, self._norms = [], []
        total = rows * bs
        idx = np.full(total, -1, dtype=np.int64)
        idx[:len(flat_idx)] = flat_idx
        logits = np.full((total, c), np.nan, dtype=np.float32)
        logits[:len(flat_logits)] = flat_logits
        return self.log_rows(idx.reshape(rows, bs), logits.reshape(rows, bs, c), gn, pn, lr)

    def log_rows(self, idx: np.ndarray, logits: np.ndarray, gn: np.ndarray, pn: np.ndarray, lr,
                 loss_given: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], int, int]:
        """The log rows of a block of steps from its minibatches: sample ids `idx` (rows, slots;
        -1 = empty slot), their float32 `logits` (rows, slots, classes), gradient and parameter
        norms and LRs per row (`loss_given`: (losses, which rows have one), the loop's own loss,
        stored instead of the mean per-sample loss unless the logits are non-finite). Also the
        block's correct and presented counts. Shared by every stepper (the loop here, the batched
        one, a user's loop recorded through train/api.py)."""
        rows = len(idx)
        valid = idx >= 0
        safe = np.where(valid, idx, 0)
        y = self.y_np[safe]
        with np.errstate(invalid="ignore", over="ignore"):
            loss = np.where(valid, per_sample_loss_np(self.cfg, np.where(valid[..., None], logits, 0), y), np.nan)
            loss = np.where(valid & ~np.isfinite(logits).all(-1), np.nan, loss)  # non-finite logits: NaN loss
        bc = self.bc_np[safe] & valid
        ba = ~self.bc_np[safe] & valid
        correct = (np.nan_to_num(logits, nan=-np.inf).argmax(-1) == y) & valid
        cnt = valid.sum(1)
        lz = np.where(valid, loss, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_loss = (lz.sum(1) / cnt).astype(np.float32)
        if loss_given is not None:  # the loop's loss where it gave one, unless the logits say the row diverged
            given, has = loss_given
            use = has & (np.isfinite(mean_loss) | ~np.isfinite(given))
            mean_loss = np.where(use, given, mean_loss).astype(np.float32)
        block = {
            "lr": np.broadcast_to(np.asarray(lr, dtype=np.float32), (rows,)).copy(),
            "loss": mean_loss,
            "accuracy": (correct.sum(1) / cnt).astype(np.float32),
            "bc_loss_sum": np.where(bc, loss, 0).sum(1).astype(np.float32),
            "ba_loss_sum": np.where(ba, loss, 0).sum(1).astype(np.float32),
            "bc_count": bc.sum(1).astype(np.int32),
            "ba_count": ba.sum(1).astype(np.int32),
            "grad_norm": np.asarray(gn).astype(np.float32),
            "param_norm": np.asarray(pn).astype(np.float32),
            S.A_BATCH_INDEX: idx.astype(np.int32),
        }
        with np.errstate(over="ignore"):  # a diverging run's logits overflow (norms, float16): inf is the truth
            block["logit_norm"] = (np.where(valid, np.linalg.norm(np.nan_to_num(logits), axis=-1), 0).sum(1) / cnt
                                   ).astype(np.float32)
            if self.writer.log_policy == S.LOG_FULL:
                block[S.A_BATCH_LOGITS] = logits.astype(np.float16)
            else:
                block.update(minibatch_summary(logits, y, valid, loss, correct))
        return block, int(correct.sum()), int(cnt.sum())

    def converged(self, t: int) -> tuple[bool, str]:
        """The stop criterion on the whole training set (only called when the epoch's running
        statistics say it may hold): 100% accuracy, and for train-loss also CE below stop_loss."""
        with self.amp():
            logits = evaluate(self.model, self.X)
        acc = (logits.argmax(1) == self.Y).float().mean().item()
        if acc < 1.0:
            return False, ""
        if self.cfg.stop == "train-acc":
            return True, f"100% train accuracy at iteration {t}"
        ce = mean_cross_entropy(logits, self.Y)
        if ce < self.cfg.stop_loss:
            return True, f"100% train accuracy and train loss {ce:.2g} < {self.cfg.stop_loss:g} at iteration {t}"
        return False, ""

    # -------------------------------------------------------------------- main loop
    def step(self, t: int, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """Step t on the minibatch (`xb` raw inputs, `yb` labels, on the device), its logits and
        norms kept for the recorder (no copies, no host syncs)."""
        self.keep(*self.stepper(t, as_model_input(xb), yb))

    def run(self, start: int, progress: bool) -> RunResult:
        """Step from iteration `start` to the end; the `Recorder` logs, snapshots, checkpoints and
        decides when the run ends (train/recorder.py)."""
        return train_steps([self], self.stepper, start=start, progress=progress)[0]


def train_steps(trainers: list[Trainer], step, *, start: int = 0, progress: bool = True,
                extra_timings: dict | None = None, desc: str | None = None, reason: str = "training",
                stopped: str | None = None) -> list[RunResult]:
    """The training loop of every built-in stepper: step the runs of `trainers` (their data,
    placement, batch size and max_steps shared) from iteration `start` to the end with `step`
    (train/step.py: a `Step` for one run, a `StackedStep` for the stacked runs of a batched sweep,
    stack position j = trainers[j] while every run trains). Each run's `Recorder` logs, snapshots,
    checkpoints and decides when it ends (train/recorder.py); a run that ends leaves the stack.
    `extra_timings`, `reason`: added to each run's stored timings, its first commit's reason;
    `desc`: the progress bar's label; `stopped`: the message of a stop signal's RunInterrupted
    ({t}: the iteration)."""
    tr0 = trainers[0]
    cfg, w = tr0.cfg, tr0.writer
    X, Y, bs, spe = tr0.X, tr0.Y, tr0.bs, tr0.steps_per_epoch
    K = len(trainers)
    active = list(range(K))  # run numbers still training, in stack order
    recs = [Recorder(tr, extra_timings=extra_timings) for tr in trainers]
    stacked = step.stacked
    for tr in trainers:
        tr.model.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=start, desc=desc or w.path.stem, unit="step", leave=False,
                   dynamic_ncols=True)
    block_logits, block_norms = [], []  # a stack's steps, handed to each run's trainer at a recording point
    t = row_t0 = start
    perm = None
    feed = None
    if not tr0.placed.on_device:  # host or mapped data: the (stacked) batch gathered a step ahead
        order = (lambda s: torch.stack([trainers[k].order(s) for k in active])) if stacked else tr0.order
        feed = tr0.placed.feeder(order, cfg.max_steps)
    try:
        with _StopFlag() as stop, recording_errors(lambda: [recs[k] for k in active], desc or w.path.name):
            for k in active:
                recs[k].begin(start, reason=reason)
            while active and t < cfg.max_steps:
                epoch, pos = divmod(t, spe)
                if perm is None or pos == 0:
                    perm = (torch.stack([trainers[k].epoch_perm(epoch) for k in active]) if stacked
                            else tr0.epoch_perm(epoch))
                if feed is None:
                    idx = perm[..., pos * bs:(pos + 1) * bs]
                    xb, yb = X[idx], Y[idx]
                else:
                    xb, yb = feed.get(t)
                logits, norms = step(t, as_model_input(xb), yb)
                if stacked:
                    block_logits.append(logits)
                    block_norms.append(norms)
                else:
                    tr0.keep(logits, norms)
                t += 1
                sig = stop.signal  # read once: a signal arriving while the runs record is acted on at the next step
                if not is_recording_point(t, cfg, spe, t - row_t0, sig):
                    continue
                leaving = []
                for j, k in enumerate(active):
                    if stacked:  # run k: its slice of the stack's steps, its weights loaded when needed
                        tr = trainers[k]
                        for lg, nm in zip(block_logits, block_norms):
                            tr.keep(lg[j], nm[:, j])
                        ended = recs[k].record(row_t0, t, stop_signal=sig,
                                               sync=partial(step.load_into, j, tr.model, tr.opt))
                    else:  # the model stepped is the run's own
                        ended = recs[k].record(row_t0, t, stop_signal=sig)
                    if ended:
                        leaving.append(j)
                block_logits, block_norms = [], []
                row_t0 = t
                if bar is not None:
                    acc = recs[active[0]].last_epoch_accuracy
                    if K == 1 and acc is not None and t % spe == 0:
                        bar.set_postfix(acc=f"{acc:.3f}", refresh=False)
                    bar.update(t - bar.n)
                if leaving:
                    keep = [j for j in range(len(active)) if j not in leaving]
                    active = [active[j] for j in keep]
                    if stacked and active:
                        step.keep(keep)
                        perm = perm[keep]
                    if feed is not None:  # the next batch was gathered for the old stack
                        feed.invalidate()
                if not sig and stop.signal and t % cfg.checkpoint_every == 0:
                    sig = stop.signal  # arrived while the runs recorded a checkpoint at t: stop at it
                if sig and active:
                    for k in active:
                        err = recs[k].interrupt(sig, stopped and stopped.format(t=t))
                    raise err
            for k in active:  # resumed at max_steps (killed while finishing)
                if not recs[k].ended:
                    recs[k].out_of_steps()
                    recs[k].finish(t)
    finally:
        if feed is not None:
            feed.invalidate()
        if bar is not None:
            bar.close()
    return [rec.result() for rec in recs]
