"""Tiny seeded models and data factories shared by the tests.

Factories are referenced as `tests.models:NAME`, the way a recipe names a user's model, so a
torch artifact can rebuild its structure from the record alone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.data import Dataset
from slimkit.model import InputSpec, Model, TorchModel
from slimkit.pipeline import apply_technique
from slimkit.registry import StepContext, TechniqueConfig, implementations

MLP_INPUTS = [InputSpec(name="x", dtype="float32", shape=["batch", 16])]


def _seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class MLP(nn.Module):
    def __init__(self, width: int = 64, out: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width),
                                 nn.ReLU(), nn.Linear(width, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_mlp(width: int = 64, seed: int = 0) -> TorchModel:
    """A three-layer MLP: 16 features in, 8 out; its weights dominate its size."""
    _seeded(seed)
    return TorchModel(MLP(width).eval(), list(MLP_INPUTS))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class CNN(nn.Module):
    def __init__(self, channels: int = 3, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.stem = _block(channels, width)
        self.res = _block(width, width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        return self.head(x + self.res(x))


def tiny_cnn(channels: int = 3, size: int = 8, seed: int = 0) -> TorchModel:
    """Conv + BatchNorm (with non-trivial running statistics) + a residual, 4 classes."""
    gen = _seeded(seed)
    module = CNN(channels)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    inputs = [InputSpec(name="image", dtype="float32", shape=["batch", channels, size, size])]
    return TorchModel(module.eval(), inputs)


def bare_mlp(seed: int = 0) -> nn.Module:
    """A bare nn.Module: loading it needs `inputs` in the ModelRef."""
    _seeded(seed)
    return MLP().eval()


def not_a_model() -> str:
    return "not a model"


def mlp_data(n: int = 10, seed: int = 0) -> Dataset:
    """A data factory for the MLP: `n` rows of 16 features, labels in 0..7."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    return Dataset({"x": x}, rng.integers(0, 8, n), "mlp_data")


def not_a_dataset() -> dict[str, np.ndarray]:
    return {"x": np.zeros((2, 16), np.float32)}


def eager(model: TorchModel, x: np.ndarray) -> np.ndarray:
    """Reference outputs of a torch model in eager mode, float32."""
    with torch.inference_mode():
        return model.module(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()


def batch(inputs: list[InputSpec], n: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Standard-normal float inputs for a model's signature with a batch of `n`."""
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([n, *i.shape[1:]]).astype(i.dtype)  # type: ignore[list-item]
            for i in inputs}


def perturb(model: TorchModel, seed: int = 123, scale: float = 0.05) -> TorchModel:
    """Shift every float weight in place, so the weights differ from what the factory builds.

    A torch artifact rebuilds its module from the factory and then loads the saved weights; a
    perturbed model shows whether the saved weights, not the factory's, came back.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest per-row cosine between two batches of outputs."""
    a2 = a.reshape(len(a), -1).astype(np.float64)
    b2 = b.reshape(len(b), -1).astype(np.float64)
    num = (a2 * b2).sum(1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    return float((num / np.maximum(den, 1e-12)).min())


def sqnr(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-noise ratio in dB of `approx` against `reference`."""
    ref = reference.astype(np.float64)
    noise = float(((ref - approx.astype(np.float64)) ** 2).sum())
    return float("inf") if noise == 0 else float(10 * np.log10((ref**2).sum() / noise))


def tiny_bert(layers: int = 2, heads: int = 4, hidden: int = 32, ffn: int = 64,
              seed: int = 0, vocab: int = 120) -> TorchModel:
    """A randomly initialised BERT encoder behind slimkit's mean-pooling embedder."""
    import transformers

    from slimkit.hf import TEXT_INPUTS, MeanPoolEmbedder

    _seeded(seed)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=ffn,
                                     max_position_embeddings=64)
    return TorchModel(MeanPoolEmbedder(transformers.BertModel(config)).eval(), list(TEXT_INPUTS))


class _Tokens(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def tiny_bert_tokens(seed: int = 0) -> TorchModel:
    """tiny_bert without pooling: one output vector per token."""
    model = tiny_bert(seed=seed)
    return TorchModel(_Tokens(model.module.encoder).eval(), model.inputs)


def token_data(n: int = 24, seq: int = 16, vocab: int = 120, seed: int = 0) -> Dataset:
    """Random token ids with padded tails of random length, as a tokenizer would give."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (n, seq))
    lengths = rng.integers(4, seq + 1, n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return Dataset({"input_ids": ids * mask, "attention_mask": mask}, None, "tokens")


def broken_model() -> TorchModel:
    """A factory that fails the way a bug in user code would."""
    raise RuntimeError("broken on purpose")


def trusted(path: Path) -> Any:
    """A test's own artifact, loaded with the trust a user gives their own folders."""
    from slimkit.artifact import load_artifact

    return load_artifact(path, trust_code=True)


def applied(fn: Any, model: Model, config: TechniqueConfig, ctx: StepContext) -> Any:
    """Run a technique's own function as a pipeline step runs it: the lineage appended and
    the report written to `ctx.workdir / report.json`."""
    impl = next(i for i in implementations(config).values() if fn in (i.apply, i.rebuild))
    return apply_technique(replace(impl, apply=fn), model, config, ctx)
