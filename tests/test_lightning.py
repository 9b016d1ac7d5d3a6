"""The Lightning callback (train/lightning.py) with a real lightning.Trainer on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lrscope
from lrscope.errors import ConfigError
from lrscope.store import schema as S

L = pytest.importorskip("lightning")

from lrscope.train.lightning import LrscopeCallback  # noqa: E402


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    b = (x[:, 1] > 0).astype(np.int64)
    return lrscope.bundle_from_arrays(train=(x[:200], y[:200], b[:200]), test=(x[200:], y[200:], b[200:]), name="toy")


class Module(L.LightningModule):
    def __init__(self, returns=("loss", "logits", "ids")):
        super().__init__()
        self.returns = returns
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        xb, yb, ids = batch
        logits = self(xb)
        out = {"loss": torch.nn.functional.cross_entropy(logits, yb), "logits": logits, "ids": ids}
        return {k: out[k] for k in self.returns}

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.2)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 10, 0.5),
                                                    "interval": "step"}}


def _fit(tmp_path, module, **config):
    data = _data()
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.train.x, data.train.y, torch.arange(200)), batch_size=40, shuffle=True)
    cb = LrscopeCallback(tmp_path, data=data, features_at="head",
                         config=dict(batch_size=40, snapshot_every=10, checkpoint_every=10, probe_size=20, **config))
    trainer = L.Trainer(max_epochs=5, callbacks=[cb], accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    return cb, trainer


def test_the_callback_records_a_lightning_run(tmp_path):
    cb, trainer = _fit(tmp_path, Module())
    rec = cb.recorder
    assert rec.status == S.STATUS_COMPLETED and rec.iteration == trainer.global_step == 25
    ds = lrscope.open_run(rec.path)
    assert ds.attrs["config"]["max_steps"] == 25 and ds.attrs["config"]["optimizer"] == "sgd"
    # the LR each step used (a per-step scheduler halves it every 10 steps), not the next one's
    np.testing.assert_allclose(ds.lr_schedule.values, 0.2 * 0.5 ** (np.arange(25) // 10), rtol=1e-6)
    idx = ds.batch_index.values
    assert sorted(idx[:5].ravel()) == list(range(200))  # each epoch presents every sample once
    assert list(ds.checkpoint_iteration.values) == [0, 10, 20, 25]
    net = lrscope.load_model(ds, into=Module())
    trained = trainer.lightning_module.state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), trained))


def test_a_training_step_without_ids_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="loss, logits and ids"):
        _fit(tmp_path, Module(returns=("loss", "logits")))
    ds = lrscope.open_run(next(tmp_path.glob("*.zarr")))
    assert ds.attrs["status"] == "running" and ds.attrs["committed"]["checkpoint"] == 1  # resumable


def test_divergence_stops_the_trainer(tmp_path):
    class Diverging(Module):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e6)

    cb, trainer = _fit(tmp_path, Diverging(), stop="train-acc")
    assert cb.recorder.status == S.STATUS_DIVERGED and trainer.global_step < 25
