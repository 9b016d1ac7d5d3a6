"""Foreground masks of the probe inputs from a torchvision DeepLabV3 segmenter (Barsbey et al.
Fig. 10, "background attribution percentage": "Utilizing the DeepLabV3 segmentation algorithm to
extract background maps, we compute the percentage of attributions that fall within vs. outside
these image background segments").

The segmenter is built with ``weights=None, weights_backbone=None`` (nothing is ever downloaded)
and filled from a local state dict file, e.g. torchvision's
``deeplabv3_resnet50_coco-cd0a2569.pth`` (``DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1``,
21 Pascal VOC classes, class 0 = background), read with ``torch.load(weights_only=True)``.

How a mask is made (our choices; the paper does not say): the image, as the classifier saw it
(values in [0, 1]; a grey image repeated to 3 channels), is resized bilinearly to
:data:`SEGMENT_SIZE` x :data:`SEGMENT_SIZE` (torchvision's weights resize to 520; 32x32 CIFAR
images upsampled to 224 keep the cost at one 224² forward per input), normalised with the
ImageNet mean and std the weights expect, segmented, the argmax over the 21 classes taken, and the
class map resized back to the input's size by nearest neighbour: foreground = any class but 0.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import numpy as np

from ..errors import LrscopeError

SEGMENTERS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large")
DEFAULT_SEGMENTER = "deeplabv3_resnet50"
N_CLASSES = 21  # Pascal VOC: 0 = background
SEGMENT_SIZE = 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, as torchvision's weights expect
RULE = (f"torchvision {{arch}} (21 VOC classes) on the input resized bilinearly to {SEGMENT_SIZE}x{SEGMENT_SIZE} "
        "(grey repeated to 3 channels), ImageNet mean/std; argmax class != 0 = foreground, resized back by nearest "
        "neighbour")


def check_segmenter(name) -> str:
    """The architecture name, or a one-line error naming the valid ones."""
    if name not in SEGMENTERS:
        raise LrscopeError(f"--segmenter {name!r}: unknown; valid: {', '.join(SEGMENTERS)}")
    return name


def file_digest(path) -> str:
    """sha256 of the file's content (cached per path, size and modification time)."""
    st = os.stat(path)
    return _digest(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _state_dict(path: str) -> dict:
    import torch

    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise LrscopeError(f"--segmenter-weights {path}: no such file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a one-line error
        raise LrscopeError(f"--segmenter-weights {path}: not a loadable state dict ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise LrscopeError(f"--segmenter-weights {path}: expected a dict of tensors (a state dict)")
    return sd


def load_segmenter(path, arch: str = DEFAULT_SEGMENTER):
    """The segmentation network `arch` (see :data:`SEGMENTERS`) with the weights of the local file
    `path`, in eval mode on the CPU. The file must hold every tensor of the network, shapes equal
    (an auxiliary head, as torchvision's COCO files have, is loaded too): otherwise a one-line error
    says what does not match."""
    from torchvision.models import segmentation

    check_segmenter(arch)
    sd = _state_dict(path)
    aux = any(k.startswith("aux_classifier.") for k in sd)
    model = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=N_CLASSES, aux_loss=aux)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        what = "; ".join(f"{label} {len(ks)} (e.g. {ks[0]})" for label, ks in
                         (("missing", missing), ("unexpected", unexpected), ("shape differs for", shape)) if ks)
        raise LrscopeError(f"--segmenter-weights {path}: does not match {arch} with {N_CLASSES} classes ({what}); "
                           f"--segmenter: {', '.join(SEGMENTERS)}")
    model.load_state_dict(sd)
    return model.eval()


@lru_cache(maxsize=4)
def _checked(path: str, size: int, mtime_ns: int, arch: str) -> None:
    load_segmenter(path, arch)


def check_segmenter_weights(path, arch: str = DEFAULT_SEGMENTER) -> None:
    """Raise the one-line error :func:`load_segmenter` would (checked once per file version)."""
    check_segmenter(arch)
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise LrscopeError(f"--segmenter-weights {path}: no such file")
    st = os.stat(path)
    _checked(os.path.realpath(path), st.st_size, st.st_mtime_ns, arch)


def foreground_masks_torch(model, x, *, size: int = SEGMENT_SIZE, batch: int = 32):
    """Foreground masks (n, h, w) bool, on x's device, of images `x` (n, c, h, w) with values in
    [0, 1] and c = 1 or 3 (see the module's text for the steps)."""
    import torch
    import torch.nn.functional as F

    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise LrscopeError(f"segmentation needs images (n, 1 or 3 channels, h, w), got shape {tuple(x.shape)}")
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for xb in x.float().split(batch):
            if xb.shape[1] == 1:
                xb = xb.expand(-1, 3, -1, -1)
            z = F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)
            cls = model((z - mean) / std)["out"].argmax(1, keepdim=True)
            back = F.interpolate(cls.float(), size=tuple(xb.shape[-2:]), mode="nearest")
            out.append(back[:, 0] != 0)
    return torch.cat(out) if out else torch.zeros((0, *x.shape[-2:]), dtype=torch.bool, device=x.device)


def foreground_masks(model, x, **kw) -> np.ndarray:
    """:func:`foreground_masks_torch` as a numpy bool array on the CPU."""
    return foreground_masks_torch(model, x, **kw).cpu().numpy()
