"""Texts to token ids with the model's own tokenizer, for `/v1/embed`.

Each request is padded only to its own longest text; the batcher pads again to the longest
member of the batch it joins. Padding to the tokenizer's maximum length instead would make
every short sentence pay for 256 or 512 positions of attention.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slimkit.errors import ConfigError
from slimkit.model import InputSpec
from slimkit.serve.errors import BadRequest
from slimkit.serve.signature import numpy_dtype

_TOKEN_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}
_LONGEST = 512  # when the tokenizer declares no usable limit


class TextEncoder:
    """The model's tokenizer, loaded from local files only (serving never downloads) and
    without remote code (a tokenizer folder is data, as the artifact is)."""

    def __init__(self, tokenizer: str, specs: list[InputSpec]) -> None:
        other = [s.name for s in specs if s.name not in _TOKEN_INPUTS]
        if other or len(specs) == 0 or any(len(s.shape) != 2 for s in specs):
            raise ConfigError(f"the model has a tokenizer but takes {[s.name for s in specs]}; "
                              f"/v1/embed needs token inputs of shape [batch, sequence] only")
        from transformers import AutoTokenizer

        try:
            self.tok: Any = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        except Exception as e:
            raise ConfigError(f"tokenizer {tokenizer}: cannot be loaded ({_line(e)})") from None
        self.specs = specs
        fixed = {s.shape[1] for s in specs if isinstance(s.shape[1], int)}
        self.fixed = fixed.pop() if fixed else None
        limit = getattr(self.tok, "model_max_length", _LONGEST) or _LONGEST
        self.max_length = self.fixed or min(int(min(limit, _LONGEST)), _LONGEST)
        pad = getattr(self.tok, "pad_token_id", None)
        self.pads = {"input_ids": int(pad) if pad is not None else 0}

    def encode(self, body: Any, max_rows: int) -> tuple[dict[str, np.ndarray], int]:
        """The feeds for a body {"texts": [...]} and its row count, or BadRequest."""
        texts = body.get("texts") if isinstance(body, dict) else None
        if not isinstance(texts, list) or not texts:
            raise BadRequest('the body must be a JSON object {"texts": ["...", ...]}')
        if not all(isinstance(t, str) for t in texts):
            raise BadRequest("texts: every item must be a string")
        if len(texts) > max_rows:
            raise BadRequest(f"{len(texts)} texts; at most {max_rows} per request (--max-batch)")
        enc = self.tok(texts, padding="max_length" if self.fixed else "longest",
                       truncation=True, max_length=self.max_length, return_tensors="np")
        feeds = {}
        for s in self.specs:
            if s.name in enc:
                feeds[s.name] = np.asarray(enc[s.name]).astype(numpy_dtype(s))
            else:  # token_type_ids from a tokenizer that gives none: one segment
                feeds[s.name] = np.zeros(enc["input_ids"].shape, numpy_dtype(s))
        return feeds, len(texts)


def pooled(output: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """One vector per text: the output itself for an embedder, the masked mean over tokens
    for a model that returns one vector per token."""
    if output.ndim != 3:
        return output
    if mask is None:
        return output.mean(1)
    m = np.zeros((*output.shape[:2], 1), output.dtype)  # the batch padded it wider
    width = min(mask.shape[1], output.shape[1])
    m[:, :width, 0] = mask[:, :width]
    return (output * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def _line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]
