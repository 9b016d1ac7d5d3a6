"""Record a plain PyTorch training loop with lrscope: two learning rates, one store each, under ./runs.

    python examples/own_loop.py        # from any folder; ~20 s on a laptop CPU; re-running is a no-op
    lrprobe compute runs && lrprobe report runs -o report.html && lrprobe serve runs

The data: scikit-learn's 8x8 digits, label y = "digit >= 5", and a bias attribute b: a bright 2x2
corner patch, drawn to agree with the label on 90% of the training images and half of the test
images (a spurious feature the network can lean on). The loop is yours; lrscope only needs, after
each optimizer step, the minibatch's sample ids (positions in the training split), its logits, and
optionally its loss (the learning rate is read from the optimizer).
"""

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import lrscope

digits = load_digits()
rng = np.random.default_rng(0)
x = (digits.images / 16).astype(np.float32)
y = (digits.target >= 5).astype(np.int64)
b = np.where(rng.random(len(y)) < np.where(np.arange(len(y)) < 1400, 0.9, 0.5), y, 1 - y)
x[b == 1, :2, :2] = 1.0
x = x.reshape(len(x), 64)
data = lrscope.bundle_from_arrays(train=(x[:1400], y[:1400], b[:1400]), test=(x[1400:], y[1400:], b[1400:]),
                                  name="digits_patch")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                        torch.nn.ReLU())
        self.head = torch.nn.Linear(128, 2)

    def forward(self, x):
        return self.head(self.body(x))


batch, steps_per_epoch, steps = 50, 28, 28 * 30
for lr in (0.02, 0.5):
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    config = dict(seed=0, batch_size=batch, max_steps=steps, snapshot_every=100, checkpoint_every=200, width=128)
    with lrscope.Recorder("runs", model=net, features_at="head", optimizer=opt, data=data, config=config) as rec:
        start = rec.resume()  # 0, or where an interrupted run left off (its last checkpoint is loaded)
        for t in range(start, steps):
            epoch, pos = divmod(t, steps_per_epoch)
            order = torch.randperm(1400, generator=torch.Generator().manual_seed(epoch))  # a function of the epoch
            ids = order[pos * batch:(pos + 1) * batch]
            logits = net(data.train.x[ids])
            loss = F.cross_entropy(logits, data.train.y[ids])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rec.step(ids, logits, loss=loss):  # True: the run has ended (max_steps, or diverged)
                break
    print(f"{rec.path}: {rec.status} at iteration {rec.iteration}")
