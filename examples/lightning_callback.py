"""Record a PyTorch Lightning run with lrscope's callback: one store under ./runs.

    pip install lrscope[lightning]
    python examples/lightning_callback.py      # from any folder; ~20 s on a laptop CPU
    lrprobe compute runs && lrprobe report runs -o report.html && lrprobe serve runs

The data are examples/own_loop.py's (8x8 digits, y = "digit >= 5", a spurious corner patch b).
The callback's contract: training_step returns a dict with the loss, the minibatch's logits and
its sample ids (positions in the training split, carried by the dataset); `features_at` names the
module whose input is the penultimate representation.
"""

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import lrscope
from lrscope.train.lightning import LrscopeCallback

digits = load_digits()
rng = np.random.default_rng(0)
x = (digits.images / 16).astype(np.float32)
y = (digits.target >= 5).astype(np.int64)
b = np.where(rng.random(len(y)) < np.where(np.arange(len(y)) < 1400, 0.9, 0.5), y, 1 - y)
x[b == 1, :2, :2] = 1.0
x = x.reshape(len(x), 64)
data = lrscope.bundle_from_arrays(train=(x[:1400], y[:1400], b[:1400]), test=(x[1400:], y[1400:], b[1400:]),
                                  name="digits_patch")


class DigitsModule(L.LightningModule):
    def __init__(self, lr):
        super().__init__()
        self.lr = lr
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                        torch.nn.ReLU())
        self.head = torch.nn.Linear(128, 2)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        xb, yb, ids = batch
        logits = self(xb)
        return {"loss": F.cross_entropy(logits, yb), "logits": logits, "ids": ids}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


L.seed_everything(0, verbose=False)
train = TensorDataset(data.train.x, data.train.y, torch.arange(len(data.train)))
loader = DataLoader(train, batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(0))
callback = LrscopeCallback("runs", data=data, features_at="head",
                           config=dict(seed=0, batch_size=50, snapshot_every=100, checkpoint_every=200))
trainer = L.Trainer(max_epochs=30, callbacks=[callback], accelerator="cpu", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(DigitsModule(lr=0.5), loader)
print(f"{callback.recorder.path}: {callback.recorder.status} at iteration {callback.recorder.iteration}")
