"""Hugging Face encoders as single-output modules.

Export, evaluation and benchmarks want one tensor out. The wrappers here turn an encoder into
a sentence embedder (mean pooling + L2 normalisation, as sentence-transformers does) or a
classifier returning logits. Loading is offline: nothing is fetched from a hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from slimkit.errors import ModelLoadError
from slimkit.formats.base import Head, InputSpec, TorchModel


class MeanPoolEmbedder(nn.Module):
    """Sentence embedding = masked mean of the last hidden state, L2-normalised."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


class LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


TEXT_INPUTS = [
    InputSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"]),
    InputSpec(name="attention_mask", dtype="int64", shape=["batch", "sequence"]),
]


def load_hf(path: Path, head: Head = "embedding") -> TorchModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        if head == "classification":
            model: nn.Module = LogitsOnly(
                transformers.AutoModelForSequenceClassification.from_pretrained(path)
            )
        else:
            encoder = transformers.AutoModel.from_pretrained(path)
            model = MeanPoolEmbedder(encoder) if head == "embedding" else encoder
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot load as a Hugging Face model ({e})") from e
    tokenizer = str(path) if any((path / f).exists() for f in
                                 ("tokenizer.json", "vocab.txt", "tokenizer_config.json")) else None
    return TorchModel(model.eval(), list(TEXT_INPUTS), tokenizer)
