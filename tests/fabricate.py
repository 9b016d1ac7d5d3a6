"""Tiny datasets written in the real on-disk formats (DATA.md): MNIST IDX, CIFAR-10/100 batches,
CelebA's torchvision layout, Waterbirds' metadata.csv folder, ImageNet's ImageFolder tree.
Images carry a class-dependent pattern so that recipes can be checked sample by sample."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path, arr, gz=True):
    if arr.ndim == 3:
        header = struct.pack(">IIII", 2051, *arr.shape)
    else:
        header = struct.pack(">II", 2049, len(arr))
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        Path(path).write_bytes(data)


def mnist(root: Path, n_train=80, n_test=40) -> Path:
    """<root>/MNIST/raw/*-ubyte.gz; class k draws a bar at rows 4+k..8+k."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        x = np.zeros((n, 28, 28), np.uint8)
        for i, k in enumerate(y):
            x[i, 4 + k:8 + k, 6:22] = 200 + rng.integers(0, 55)
        write_idx(raw / f"{split}-images-idx3-ubyte", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y)
    return root


def cifar_images(y: np.ndarray) -> np.ndarray:
    """(n, 3, 32, 32) uint8: class k fills column block 3k..3k+3 of the red channel, grey elsewhere."""
    x = np.full((len(y), 3, 32, 32), 90, np.uint8)
    for i, k in enumerate(y):
        x[i, 0, :, 3 * k:3 * k + 3] = 250
    return x


def cifar10(root: Path, n_per_batch=20, n_test=40) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        y = np.arange(n) % 10
        with open(folder / name, "wb") as f:
            pickle.dump({"data": cifar_images(y).reshape(n, -1), "labels": list(map(int, y))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


def cifar100(root: Path, n_train=200, n_test=100) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % 100
        with open(folder / name, "wb") as f:
            pickle.dump({"data": np.zeros((n, 3072), np.uint8) + (y[:, None] * 2).astype(np.uint8),
                         "fine_labels": list(map(int, y))}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    return root


def _image(k: int, h: int, w: int) -> Image.Image:
    img = np.full((h, w, 3), 60, dtype=np.uint8)
    img[: h // 2, :, k % 3] = 230  # label-dependent colour in the top half
    return Image.fromarray(img)


def write_jpeg(img: Image.Image, path: str, quality: int = 95) -> None:
    img.save(path, format="JPEG", quality=quality)


def write_png(img: Image.Image, path: str) -> None:
    img.save(path, format="PNG")


CELEBA_ATTRS = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
                "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
                "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
                "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
                "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
                "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
                "Wearing_Necktie", "Young"]


def celeba(root: Path, n=24) -> Path:
    """<root>/celeba/: list_attr_celeba.txt, list_eval_partition.txt, img_align_celeba/*.jpg (218×178)."""
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    attrs = rng.choice([-1, 1], size=(n, 40))
    lines = [str(n), " ".join(CELEBA_ATTRS)]
    parts = []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        write_jpeg(_image(int(attrs[i, 9] > 0), 218, 178), str(base / "img_align_celeba" / name), quality=95)
        lines.append(name + "  " + " ".join(f"{v:2d}" for v in attrs[i]))
        parts.append(f"{name} {0 if i < n // 2 else (1 if i < 3 * n // 4 else 2)}")
    (base / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (base / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return root


def waterbirds(root: Path, n=24) -> Path:
    """<root>/waterbird_complete95_forest2water2/: metadata.csv + species folders of JPEGs."""
    folder = root / "waterbird_complete95_forest2water2"
    rows = ["img_id,img_filename,y,split,place,place_filename"]
    for i in range(n):
        y, place, split = i % 2, (i // 2) % 2, (0 if i < n // 2 else (1 if i < 3 * n // 4 else 2))
        rel = f"{y:03d}.Species_{y}/bird_{i:04d}.jpg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        write_jpeg(_image(y, 80, 100), str(folder / rel), quality=95)
        rows.append(f"{i + 1},{rel},{y},{split},{place},/x/place_{place}.jpg")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def imagenet(root: Path, classes=3, per_class=4) -> Path:
    """<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (one PNG among them)."""
    for sub, n in (("train", per_class), ("val", 2)):
        for k in range(classes):
            d = root / sub / f"n{k:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                if j == 0 and sub == "train":
                    write_png(_image(k, 40, 50), str(d / f"img{j}.png"))
                else:
                    write_jpeg(_image(k, 40, 50), str(d / f"img{j}.JPEG"), quality=95)
    return root


IMAGE_FOLDER_CLASSES = ("cat", "dog", "fox")


def image_folder(root: Path, n=36, *, bias=True, names=True, codes=False, columns=None, fmt="csv",
                 metadata="metadata.csv") -> Path:
    """<root>/images/<class>/*.png|jpg + a metadata table (your own data, README): n images, the
    class drawn as the top half's colour; split rows 0..n/2 train, then val, then test. `names`:
    string classes and bias values (cat/dog/fox, indoor/outdoor), else ints; `codes`: splits as
    0/1/2, else train/val/test; `columns` renames path/target/bias/split; `fmt`: csv or parquet."""
    cols = {"path": "path", "target": "target", "bias": "bias", "split": "split", **(columns or {})}
    rows = []
    for i in range(n):
        y, place = i % 3, (i // 3) % 2
        sp = 0 if i < n // 2 else (1 if i < 2 * n // 3 else 2)
        rel = f"images/{IMAGE_FOLDER_CLASSES[y]}/img{i:03d}.{'png' if i % 4 == 0 else 'jpg'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img = _image(y, 30 + i % 5, 40)
        write_png(img, str(root / rel)) if rel.endswith(".png") else write_jpeg(img, str(root / rel))
        row = {cols["path"]: rel, cols["target"]: IMAGE_FOLDER_CLASSES[y] if names else y,
               cols["split"]: sp if codes else ("train", "val", "test")[sp]}
        if bias:
            row[cols["bias"]] = ("indoor", "outdoor")[place] if names else place
        rows.append(row)
    if fmt == "parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(root / metadata)
    else:
        keys = list(rows[0])
        lines = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]
        (root / metadata).write_text("\n".join(lines) + "\n")
    return root
