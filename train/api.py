"""Recording a training loop of one's own: ``lrscope.Recorder``.

The user's loop takes the optimizer steps; after each one it hands the recorder the minibatch's
sample ids (positions in the training split), the logits of its forward pass, the step's learning
rate and, if it has one, its loss. lrscope does the rest exactly as for its own loop — it is a
third driver of the same `train.recorder.Recorder` as `Trainer` (train/loop.py) and the batched
stepper (train/batched.py): the same host statistics, divergence check, snapshot (its own forward
passes on the probe subset and the test split, in eval mode, the model's mode restored after),
checkpoint (model and optimizer) and commit policy, the same store writer, lock file and errors,
so the store is the one ``lrtrain`` writes and every reader (probes, report, ``lrprobe serve``,
``open_sweep``) reads it.

    rec = lrscope.Recorder("runs", model=net, features_at="fc", optimizer=opt, data=bundle,
                           config=dict(lr=0.1, seed=0, batch_size=64, max_steps=600))
    start = rec.resume()            # 0 for a new run; else loads the last checkpoint, returns its step
    for t in range(start, 600):
        ids = order(t)              # the minibatch's positions in the training split
        logits = net(x[ids]); loss = F.cross_entropy(logits, y[ids])
        opt.zero_grad(); loss.backward(); opt.step()
        if rec.step(ids, logits, loss=loss):   # after optimizer.step(); True: the run has ended
            break
    rec.close()                     # the final snapshot and checkpoint (a `with` block does it)

A resumed run replays what an uninterrupted one would only when the loop's minibatch order is a
function of (seed, step), as the built-in loop's is (the examples draw each epoch's permutation
from a generator seeded with (seed, epoch)).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil

import numpy as np
import torch

from ..errors import ConfigError, DataError, LrscopeError, StoreError
from ..store import schema as S
from ..store.reader import half_created, open_store, store_exists
from ..store.writer import RunWriter
from .config import EXECUTION_FIELDS, OPTIMIZERS, RunConfig, check_run_id
from .data import DataBundle, as_model_input, probe_subset
from .loop import Trainer, create_store, locked_output, store_path
from .optim import load_optimizer
from .placement import Placed, choose, dataset_bytes
from .recipes import bundle_from_arrays
from .recorder import GRAD_UNKNOWN, is_recording_point, recording_errors
from .recorder import Recorder as RunRecorder
from .tapped import TappedNet, as_feature_net

RECORDED_BY = S.RECORDED_BY_API  # model_info["recorded_by"] of a store written through this API
# RunConfig fields lrscope does not control in a user's loop: refused in the config
NOT_HERE = {"device": "the model's device is used", "channels_last": "set the memory format in your own loop",
            "weights": "load your own initial weights before recording", "deterministic":
            "call torch.use_deterministic_algorithms yourself", "dataset": "name the data (bundle_from_arrays(name=))",
            "val_fraction": "your loop brings its own data; lrscope holds no validation split out of it"}
REQUIRED = {"batch_size": "the largest minibatch your loop takes", "max_steps": "the number of optimizer steps "
            "your loop will take (the run ends there)"}
API_DEFAULTS = {"stop": "max-steps"}
INT_DTYPES = frozenset({torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32,
                        torch.uint64})  # sample ids  # the user's loop decides when it stops, unless asked otherwise


class StepError(LrscopeError, ValueError):
    """A step handed to the recorder that does not fit the run (ids, logits, lr, loss)."""


def _describe_model(model: torch.nn.Module) -> str:
    return type(model).__name__


def api_config(config: dict, *, data: DataBundle, model_name: str, optimizer) -> tuple[RunConfig, dict]:
    """(the RunConfig the recorder works from, the config stored: its fields plus the user's own
    keys). The RunConfig's fields in `config` are checked against their declarations; lr,
    optimizer, momentum and weight_decay default to the optimizer's; the other keys are kept as
    they are (JSON values). ConfigError for a missing or impossible value."""
    if not isinstance(config, dict):
        raise ConfigError(f"config must be a dict of settings, got {type(config).__name__}")
    fields = set(RunConfig.__dataclass_fields__)
    for k in config:
        if not isinstance(k, str):
            raise ConfigError(f"config keys must be strings, got {k!r}")
        if k in NOT_HERE:
            raise ConfigError(f"config key {k!r} does not apply to a recorded loop: {NOT_HERE[k]}")
    for k, why in REQUIRED.items():
        if k not in config:
            raise ConfigError(f"config needs {k}: {why}")
    known = {k: v for k, v in config.items() if k in fields}
    extra = {k: v for k, v in config.items() if k not in fields}
    group = optimizer.param_groups[0] if optimizer is not None and optimizer.param_groups else {}
    if "lr" not in known:
        if not isinstance(group.get("lr"), (int, float)):
            raise ConfigError("config needs lr (the optimizer's is not a number)")
        known["lr"] = float(group["lr"])
    if "optimizer" not in known and optimizer is not None:
        kind = type(optimizer).__name__
        known["optimizer"] = kind.lower() if kind.lower() in OPTIMIZERS else kind
    for k in ("momentum", "weight_decay"):
        if k not in known and isinstance(group.get(k), (int, float)) and not isinstance(group.get(k), bool):
            known[k] = float(group[k])
    known.setdefault("model", model_name)
    for k, v in API_DEFAULTS.items():
        known.setdefault(k, v)
    for k, v in known.items():
        if k in ("optimizer", "model"):  # free names here: the user's optimizer and network
            from ..store.schema import NAME_RE

            if not isinstance(v, str) or not NAME_RE.match(v):
                raise ConfigError(f"config {k} must be a name of letters, digits and _ . - (starting with a "
                                  f"letter), got {v!r}")
            continue
        RunConfig.check_field(k, v)
    try:
        extra = json.loads(json.dumps(extra, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config values must be JSON (numbers, strings, lists, dicts; finite): {e}") from None
    cfg = RunConfig(dataset=data.name, **known, val_fraction=0.0)  # nothing is held out of the user's data
    if cfg.warmup_steps >= cfg.max_steps:
        raise ConfigError(f"warmup_steps ({cfg.warmup_steps}) must be below max_steps ({cfg.max_steps})")
    stored = cfg.to_dict()
    stored.pop("val_fraction")  # not a knob here: stores and ids as before the field
    return cfg, {**stored, **extra}


def api_run_id(stored: dict) -> str:
    """dataset-model-lr<lr>-s<seed>-<hash of everything else that defines the run>."""
    base = f"{stored['dataset']}-{stored['model']}-lr{stored['lr']:g}-s{stored['seed']}"
    blob = json.dumps(_identity(stored), sort_keys=True).encode()
    return f"{base}-{hashlib.sha1(blob).hexdigest()[:8]}"


def _identity(stored: dict) -> dict:
    return {k: v for k, v in stored.items() if k not in EXECUTION_FIELDS}


class _LoopTrainer(Trainer):
    """The `Trainer` of a user's loop: snapshots, checkpoints and the convergence check are the
    built-in loop's; the steps' ids, logits, LRs and losses come from the user (`add`)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.slots = int(self.writer.root[S.G_LOG][S.A_BATCH_INDEX].shape[1])
        self.n_classes = self.bundle.num_classes
        self._ids: list = []
        self._lrs: list[float] = []
        self._losses: list = []
        self._ngrads: list[int] = []
        self.prev_pnorm = self.param_norms().double().cpu().numpy()  # the weights' norms before the next step
        self.last_snapshot: int | None = None  # iterations of the latest snapshot and checkpoint
        self.last_checkpoint: int | None = None

    def add(self, ids, logits, lr, loss) -> None:
        """Check one step's record and keep references to it. What needs no look at the values is
        checked here (types, dtypes, shapes); the ids' range once per block, vectorised, when the
        block is recorded (a check per step cost ~20 µs in the loop, 2% of a parity FCN step; on a
        device it would be a host sync a step)."""
        if not torch.is_tensor(logits):
            raise StepError("logits must be a torch tensor (the minibatch's model outputs), got "
                            f"{type(logits).__name__}")
        if logits.dim() != 2 or logits.shape[1] != self.n_classes:
            raise StepError(f"logits must have shape (batch, {self.n_classes}), got {tuple(logits.shape)}")
        n = logits.shape[0]
        if not 1 <= n <= self.slots:
            raise StepError(f"a minibatch of {n} samples: must be 1 to batch_size={self.slots}")
        if torch.is_tensor(ids):
            if ids.dtype not in INT_DTYPES:
                raise StepError(f"ids must be integer positions in the training split, got dtype {ids.dtype}")
            if ids.dim() != 1 or ids.shape[0] != n:
                raise StepError(f"ids must be one position per logits row: shape ({n},), got {tuple(ids.shape)}")
        else:
            try:
                ids = np.asarray(ids)
            except Exception:
                raise StepError(f"ids must be integer positions in the training split, got {type(ids).__name__}") \
                    from None
            if ids.dtype.kind not in "iu":
                raise StepError(f"ids must be integer positions in the training split, got dtype {ids.dtype}")
            if ids.shape != (n,):
                raise StepError(f"ids must be one position per logits row: shape ({n},), got {ids.shape}")
        if lr is None:
            lr = self.opt.param_groups[0]["lr"] if self.opt is not None else self.cfg.lr
        if torch.is_tensor(lr):
            lr = lr.item()
        if not (type(lr) is float and 0 <= lr < math.inf) and (  # the common case, checked first
                isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating, np.integer))
                or not math.isfinite(lr) or lr < 0):
            raise StepError(f"lr must be a finite number >= 0, got {lr!r}")
        if loss is not None:
            if torch.is_tensor(loss):
                if loss.numel() != 1:
                    raise StepError(f"loss must be the step's scalar loss, got a tensor of shape {tuple(loss.shape)}")
                loss = loss.detach() if loss.dim() == 0 else loss.detach().reshape(())
            elif isinstance(loss, bool) or not isinstance(loss, (int, float, np.floating, np.integer)):
                raise StepError(f"loss must be a number or a scalar tensor, got {type(loss).__name__}")
        # one fused norm call, as the built-in loop's step: this step's gradients and the weights as
        # the update left them, which are the next step's "before" weights (the log's param_norm
        # is the norm of the weights a step's logits came from, as lrtrain records it; `block`
        # shifts them by a row)
        grads = [p.grad for p in self.params if p.grad is not None]
        with torch.no_grad():
            self._norms.append(torch.stack(torch._foreach_norm(grads + self.params)) if self.params
                               else torch.zeros(0))
        self._ngrads.append(len(grads))
        self._logits.append(logits.detach())
        self._ids.append(ids)
        self._lrs.append(float(lr))
        self._losses.append(loss)

    def _check_range(self, ids: np.ndarray, sizes: np.ndarray, t0: int) -> None:
        """StepError naming the first step of the block (from iteration t0) with an id out of range."""
        bad = (ids < 0) | (ids >= self.n)
        if bad.any():
            pos = int(np.argmax(bad))
            step = t0 + int(np.searchsorted(np.cumsum(sizes), pos, side="right"))
            raise StepError(f"step {step}: sample id {int(ids[pos])} is out of range: ids are positions in the "
                            f"training split (0 to {self.n - 1}); the steps from {t0} on are not recorded, the store "
                            "is at its last commit: resume it with a new Recorder")

    def snapshot(self, t: int, final: bool = False) -> None:
        """As the built-in loop's; a loop that ends right after a recording point (close) has its
        snapshot at that iteration already: a buffered one is replaced by the final one, a written
        one is kept (iterations stay distinct)."""
        if self.last_snapshot == t:
            buf = self.writer._snap_buf
            if not (final and buf and buf[-1][S.A_SNAP_ITER] == t):
                return
            dropped = buf.pop()
            self.writer.buffered_snapshot_bytes -= sum(v.nbytes for v in dropped.values() if isinstance(v, np.ndarray))
        super().snapshot(t, final)
        self.last_snapshot = t

    def checkpoint(self, t: int) -> None:
        """As the built-in loop's, once per iteration (the weights have not changed since)."""
        if self.last_checkpoint != t:
            super().checkpoint(t)
            self.last_checkpoint = t

    @torch.no_grad()
    def param_norms(self) -> torch.Tensor:
        """The norms of the weights now (each tensor's): the first step's "before" weights."""
        return torch.stack(torch._foreach_norm(self.params)) if self.params else torch.zeros(0)

    def drop(self) -> None:
        self._ids, self._logits, self._norms, self._lrs, self._losses, self._ngrads = [], [], [], [], [], []

    def block(self, t0: int, t: int):
        """The log rows of the steps t0..t-1 the user's loop handed over (one host sync for all;
        vectorised where every minibatch fills its slots, the common case)."""
        rows, slots, c = t - t0, self.slots, self.n_classes
        if all(torch.is_tensor(i) for i in self._ids):  # one copy for the block (one sync on a device)
            flat_ids = torch.cat(self._ids).to("cpu", torch.int64).numpy()
        else:
            flat_ids = np.concatenate([i.cpu().numpy() if torch.is_tensor(i) else i for i in self._ids]
                                      ).astype(np.int64, copy=False)
        sizes = np.fromiter((len(i) for i in self._ids), dtype=np.int64, count=rows)
        try:
            self._check_range(flat_ids, sizes, t0)
        except StepError:
            self.drop()
            raise
        flat_logits = torch.cat(self._logits).float().cpu().numpy()
        ngrads = np.array(self._ngrads)
        k = len(self.params)
        norms = torch.cat(self._norms).double().cpu().numpy()  # per row: its grads' norms, then the weights'
        ends = np.cumsum(ngrads + k)
        after = norms[(ends - k)[:, None] + np.arange(k)] if k else np.zeros((rows, 0))  # weights after each step
        pnorms = np.concatenate([self.prev_pnorm[None], after[:-1]])  # ... and before it
        self.prev_pnorm = after[-1]
        if all(torch.is_tensor(v) for v in self._losses):
            losses, has = torch.stack(self._losses).float().cpu().numpy().astype(np.float64), np.ones(rows, bool)
        else:
            has = np.array([v is not None for v in self._losses])
            losses = np.array([np.nan if v is None else float(v) for v in self._losses], dtype=np.float64)
        if (sizes == slots).all():
            idx, logits = flat_ids.reshape(rows, slots), flat_logits.reshape(rows, slots, c)
        else:  # short minibatches (an epoch's last): empty slots hold -1 and NaN
            idx = np.full((rows, slots), -1, dtype=np.int64)
            logits = np.full((rows, slots, c), np.nan, dtype=np.float32)
            ends = np.cumsum(sizes)
            for r, (n, e) in enumerate(zip(sizes, ends)):
                idx[r, :n] = flat_ids[e - n:e]
                logits[r, :n] = flat_logits[e - n:e]
        if (ngrads == ngrads[0]).all():
            gn = (np.sqrt((norms.reshape(rows, -1)[:, :ngrads[0]] ** 2).sum(1)) if ngrads[0]
                  else np.full(rows, np.nan))
        else:
            gn = np.full(rows, np.nan)
            for r, (ng, e) in enumerate(zip(ngrads, ends - k)):
                if ng:
                    gn[r] = np.sqrt((norms[e - ng:e] ** 2).sum())
        pn = np.sqrt((pnorms ** 2).sum(1))
        lrs = np.array(self._lrs)
        self.drop()
        block, corr, cnt = self.log_rows(idx, logits, gn, pn, lrs, loss_given=(losses, has))
        block[GRAD_UNKNOWN] = ngrads == 0
        return block, corr, cnt


class Recorder:
    """Record a training loop of your own into a run store (see the module docstring).

    out: the folder of run stores (``runs``); the store is ``<out>/<name>.zarr``, `name` by
    default ``<data>-<model>-lr<lr>-s<seed>-<hash of the config>``.
    model: any ``torch.nn.Module``; `features_at` names the module whose input is its penultimate
    representation (``fc``, ``classifier.1``: the last step of forward; checked on a few training
    inputs). lrscope's forward passes feed it the data's inputs as stored (float32; uint8 scaled
    to [0, 1]): normalisation belongs in the model.
    optimizer: checkpointed with the model (any torch optimizer).
    data: a `DataBundle`, or ``dict(train=(x, y, b), test=(x, y, b), name=...)`` for
    `bundle_from_arrays` (b None: no bias attribute).
    config: the run's settings, kept in the store (JSON). Required: ``batch_size`` (the largest
    minibatch) and ``max_steps``. lrscope's own knobs where they apply — ``lr`` (default: the
    optimizer's), ``seed``, ``snapshot_every``, ``checkpoint_every``, ``probe_size``,
    ``log_logits``, ``train_logits``, ``early_snapshots``, ``stop`` (default max-steps: the loop
    decides; train-acc / train-loss make `step` return True when the criterion holds), ``loss``
    (ce / focal: the per-sample losses of the log) — and any keys of your own (width, augment,
    ...), which `open_sweep` turns into run coordinates when they vary.
    """

    def __init__(self, out: str | os.PathLike = "runs", *, model: torch.nn.Module, optimizer, data,
                 config: dict, features_at: str | None = None, name: str | None = None):
        if isinstance(data, dict):
            data = bundle_from_arrays(**data)
        if not isinstance(data, DataBundle):
            raise DataError(f"data must be a DataBundle (lrscope.bundle_from_arrays) or a dict of its arguments, "
                            f"got {type(data).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        net = as_feature_net(model, features_at)
        self.cfg, self.config = api_config(config, data=data, model_name=_describe_model(model), optimizer=optimizer)
        self.data, self.net, self.optimizer = data, net, optimizer
        self.device = next(iter(net.parameters()), torch.empty(0)).device
        if isinstance(net, TappedNet):
            example = as_model_input(data.train.x[:8]).to(self.device)
            net.check(example, data.num_classes)
        self.path = store_path(out, check_run_id(name) if name is not None else api_run_id(self.config))
        self.t = self.t0 = 0
        self._rec: RunRecorder | None = None
        self._trainer: _LoopTrainer | None = None
        self._placed: Placed | None = None
        self.ended = False
        self.status: str | None = None
        self._resumable = False
        self.lock = locked_output(out, self.path)
        try:
            self._open()
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ opening
    def _open(self) -> None:
        path = self.path
        fresh = not store_exists(path)
        if not fresh and half_created(path):
            shutil.rmtree(path)
            fresh = True
        if not fresh:
            attrs = open_store(path).attrs.asdict()
            stored = attrs[S.ATTR_CONFIG]
            if json.dumps(_identity(stored), sort_keys=True) != json.dumps(_identity(self.config), sort_keys=True):
                diff = sorted(k for k in set(stored) | set(self.config)
                              if k not in EXECUTION_FIELDS and stored.get(k) != self.config.get(k))
                raise ConfigError(f"{path} holds a run with a different config ({', '.join(diff)}); choose another "
                                  "name or out folder")
            if (attrs.get(S.ATTR_MODEL_INFO) or {}).get("recorded_by") != RECORDED_BY:
                raise StoreError(f"{path} holds a run of lrtrain's loop; record yours under another name")
            if attrs[S.ATTR_STATUS] in S.FINISHED:
                self.ended, self.status = True, attrs[S.ATTR_STATUS]
                self.t = attrs[S.ATTR_COMMITTED]["iteration"]
                self._release()  # nothing to write
                return
            if attrs[S.ATTR_COMMITTED]["checkpoint"] >= 1:
                self._resumable = True
                return
        elif path.exists() and any(path.iterdir()):
            raise StoreError(f"{path} exists and is not a run store; refusing to overwrite it")
        self._create()

    def _placement(self) -> Placed:
        return Placed(self.data, choose(self.cfg.data_placement, dataset_bytes(self.data), self.device), self.device)

    def _create(self) -> None:
        """A new store, its snapshot and checkpoint at iteration 0 (the model as it is now)."""
        probe_idx = probe_subset(self.data, self.cfg.probe_size, self.cfg.data_seed)
        placed = self._placed = self._placement()
        info = {"recorded_by": RECORDED_BY, "model_class": f"{type(self._user_model).__module__}."
                f"{type(self._user_model).__qualname__}", "features_at": getattr(self.net, "features_at", None)}
        try:
            w = create_store(self.path, self.cfg, self.data, self.net, probe_idx, self.device, self.lock,
                              placed.placement, config=self.config, extra_info=info)
        except OSError as e:
            raise LrscopeError(f"cannot create {self.path}: {e.strerror or e}") from None
        self._start(w, probe_idx, 0)

    @property
    def _user_model(self) -> torch.nn.Module:
        return self.net.net if isinstance(self.net, TappedNet) else self.net

    def _start(self, writer: RunWriter, probe_idx, start: int, last_snapshot: int | None = None) -> None:
        self._trainer = _LoopTrainer(self.cfg, self.data, self.net, self.optimizer, writer, self.device, probe_idx,
                                     placed=self._placed)
        if start:  # resumed: the checkpoint it resumes from is at `start`
            self._trainer.last_snapshot, self._trainer.last_checkpoint = last_snapshot, start
        self._rec = RunRecorder(self._trainer)
        with self._errors():
            self._rec.begin(start, reason="training (recorded from the user's loop)")
        self.t = self.t0 = start
        self.status = S.STATUS_RUNNING

    def _errors(self):
        return recording_errors(lambda: [self._rec] if self._rec is not None else [], self.path.name)

    # ------------------------------------------------------------------ the public calls
    def resume(self, model: torch.nn.Module | None = None, optimizer=None) -> int:
        """The step the loop goes on from: 0 for a new run; for an interrupted one the iteration of
        its last checkpoint, whose weights and optimizer state are loaded into the model and
        optimizer (everything recorded after it is dropped, as a resumed lrtrain run does); for a
        finished one its last iteration (`step` then returns True at once)."""
        if model is not None and model is not self._user_model:
            raise ConfigError("resume(model=...): pass the model the recorder was made with")
        if optimizer is not None and optimizer is not self.optimizer:
            raise ConfigError("resume(optimizer=...): pass the optimizer the recorder was made with")
        if not self._resumable:
            return self.t
        self._resumable = False
        writer = RunWriter.resume(self.path, self.lock)
        k = writer.committed["checkpoint"] - 1
        reader = open_store(self.path)  # checksummed reads: a damaged checkpoint is an error, not weights
        params = reader[S.G_PARAMS]
        try:
            self.net.load_state_dict({n: torch.from_numpy(np.asarray(params[n][k])) for n in self.net.state_dict()})
        except (KeyError, RuntimeError) as e:
            raise StoreError(f"{self.path}: its checkpoint does not fit the model ({str(e).splitlines()[0]})") from None
        keys = writer.optim_keys.get(str(k % S.OPTIM_SLOTS), [])
        if keys and self.optimizer is not None:
            slot = reader[S.G_OPTIM][str(k % S.OPTIM_SLOTS)]
            load_optimizer(self.optimizer, {n: np.asarray(slot[n][...]) for n in keys}, self.device)
        self._placed = self._placement()
        probe_idx = probe_subset(self.data, self.cfg.probe_size, self.cfg.data_seed)
        snaps = writer.committed["snapshot"]
        last = int(reader[S.G_SNAP][S.A_SNAP_ITER][snaps - 1]) if snaps else None
        self._start(writer, probe_idx, writer.committed["iteration"], last_snapshot=last)
        return self.t

    @property
    def trainer(self):
        """The run's `Trainer` (train/loop.py), fed one step at a time by `step` (its `add`, and
        `drop` at recording points); None before the store is open. benchmarks/api_overhead.py
        times that per-step keeping apart from the store."""
        return self._trainer

    @property
    def iteration(self) -> int:
        """The steps recorded so far."""
        return self.t

    def step(self, ids, logits: torch.Tensor, lr: float | None = None, loss=None) -> bool:
        """Record one optimizer step, after ``optimizer.step()``: `ids` the minibatch's positions
        in the training split (integers, a tensor on any device or an array), `logits` its
        (batch, classes) forward output, `lr` the step's learning rate (default: the optimizer's
        first param group's), `loss` its loss (optional: else the mean per-sample loss of the
        logits is logged). Returns True when the run has ended (max_steps, a stop criterion, or
        divergence: a non-finite loss or logits): stop stepping. A step that does not fit the run
        (types, dtypes, shapes, class count) is a one-line `StepError` and changes nothing; ids out
        of range are found when the block of steps is recorded (the next recording point): a
        `StepError` naming the step, the store left at its last commit for a new Recorder to
        resume."""
        if self.ended:
            return True
        if self._rec is None:
            raise LrscopeError(f"{self.path.name}: not recording: " + (
                "it holds an interrupted run, call start = recorder.resume() first and go on from that step"
                if self._resumable else "the recorder was closed or stopped by an error; make a new Recorder for "
                "the run and call resume()"))
        tr = self._trainer
        tr.add(ids, logits, lr, loss)
        self.t += 1
        if not is_recording_point(self.t, self.cfg, tr.steps_per_epoch, self.t - self.t0):
            return False
        return self._record()

    def _record(self, stop_signal=None) -> bool:
        t0, t = self.t0, self.t
        self.t0 = t
        try:
            with self._errors():
                ended = self._rec.record(t0, t, stop_signal=stop_signal)
        except StepError:  # ids out of range (checked per block): the store stays at its last commit
            self.t = self.t0 = t0
            self._release()
            self._rec = None
            raise
        if ended:
            self._end()
        return ended

    def _end(self) -> None:
        self.ended, self.status = True, self._rec.status
        self.t = self._rec.t
        self._release()

    def close(self, finished: bool = True) -> None:
        """The loop is done: record what is pending, then (finished) the final snapshot and
        checkpoint, status completed; or (finished=False) a checkpoint here and status running, to
        be resumed later. Releases the store. A run with no step recorded stays as created."""
        if self.ended or self._rec is None or self.t == 0:
            self._release()
            return
        rec = self._rec
        try:
            if self.t > self.t0 and self._record():
                return
            with self._errors():
                if finished:
                    if self.t < self.cfg.max_steps:
                        rec.reason = f"the loop ended at iteration {self.t} (max_steps={self.cfg.max_steps})"
                    rec.finish(self.t)
                    self._end()
                    return
                rec.w.flush()
                self._trainer.checkpoint(self.t)
                rec.w.timings = rec.timings()
                rec.w.commit(status=S.STATUS_RUNNING, reason=f"stopped by the loop at iteration {self.t}; "
                             "resume with Recorder(...).resume()")
        finally:
            self._release()

    def _release(self) -> None:
        if self._placed is not None:
            self._placed.close()
            self._placed = None
        if self.lock is not None:
            self.lock.release()
        if self._rec is not None and not self.ended:
            self._rec = None  # released: a later step is refused

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """A clean exit closes the run (finished); an exception leaves it resumable at its last
        commit: Ctrl-C as running, an error of the loop as failed with the error (both resume)."""
        if exc_type is None:
            self.close()
            return
        try:
            if self._rec is not None and not self.ended and not isinstance(exc, LrscopeError):
                w = self._rec.w
                with contextlib.suppress(OSError):
                    if isinstance(exc, KeyboardInterrupt):
                        w.commit(status=S.STATUS_RUNNING, reason=f"interrupted near iteration {self.t}; resume "
                                 "with Recorder(...).resume()")
                    else:
                        w.commit(status=S.STATUS_FAILED, reason=f"{type(exc).__name__}: {exc}")
        finally:
            self._release()
