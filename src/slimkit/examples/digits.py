"""A CNN trained on scikit-learn's bundled `digits` images (8x8, real, labelled).

Trained once (seeded, about 15 s on two cores) and cached as safetensors; later loads read
the cached weights. The network is wider than 8x8 digits need on purpose: compute dominates at
a serving batch of 64, so pruning and quantization have real work to remove.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimkit.dataset import Dataset
from slimkit.errors import DataError
from slimkit.formats.base import InputSpec, TorchModel

VERSION = "2"  # bump when the architecture or training changes, to retrain
INPUTS = [InputSpec(name="image", dtype="float32", shape=["batch", 1, 8, 8])]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_block(1, w), _block(w, 2 * w), nn.MaxPool2d(2))
        self.body = _block(2 * w, 4 * w)
        self.res = _block(4 * w, 4 * w)  # residual: pruning must keep both sides aligned
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(image))
        return self.head(x + self.res(x))


def _arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return x, d.target.astype(np.int64)


def _split_indices(n: int, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Stratified, seeded: 20% test; of the rest, 200 images set apart for calibration."""
    rng = np.random.default_rng(0)
    test, train = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(len(idx) * 0.2)
        test.extend(idx[:k])
        train.extend(idx[k:])
    train = rng.permutation(np.array(train))
    return {"test": np.sort(np.array(test)), "train": train, "calibration": train[:200]}


def load_data(split: str = "test", **_: object) -> Dataset:
    x, y = _arrays()
    splits = _split_indices(len(x), y)
    if split not in splits:
        raise DataError(f"digits: unknown split {split!r} ({', '.join(splits)})")
    idx = splits[split]
    return Dataset({"image": x[idx]}, y[idx], f"digits-{split}")


def _cache_path() -> Path:
    root = Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))
    return root / "examples" / f"digits-cnn-v{VERSION}.safetensors"


def train(epochs: int = 20, seed: int = 0) -> DigitsCNN:
    from slimkit.progress import progress_bar

    torch.manual_seed(seed)
    data = load_data("train")
    x = torch.from_numpy(data.inputs["image"])
    y = torch.from_numpy(data.labels)  # type: ignore[arg-type]
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    with progress_bar("training digits CNN", total=epochs) as advance:
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 64):
                b = perm[i : i + 64]
                loss = nn.functional.cross_entropy(model(x[b]), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            advance(1, f"loss {loss.item():.3f}")
    return model.eval()


def load_model() -> TorchModel:
    from safetensors.torch import load_file, save

    from slimkit.io import atomic_write_bytes

    path = _cache_path()
    model = DigitsCNN()
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
    else:
        model = train()
        atomic_write_bytes(path, save(model.state_dict()))
    return TorchModel(model.eval(), list(INPUTS))


def student(width: int = 16, seed: int = 0) -> TorchModel:
    """An untrained, narrower DigitsCNN (1/16 of the FLOPs at width 16): the student that the
    distillation examples train, from labels alone or from the trained CNN as teacher."""
    torch.manual_seed(seed)
    return TorchModel(DigitsCNN(width).eval(), list(INPUTS))
