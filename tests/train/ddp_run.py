"""Run by the torchrun test: two ranks train the same tiny model on CPU (gloo).

Each rank writes its final weights; rank 0 alone writes the result and the checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.nn import functional as F

from slimkit.train import TrainSettings, fit
from tests.models import MLP
from tests.train.test_loop import learnable, texts


def main(out: Path) -> None:
    torch.manual_seed(7)  # the same start on both ranks; DDP would broadcast rank 0's anyway
    module = MLP(32)
    start = {k: v.clone() for k, v in module.state_dict().items()}

    def ce(m: torch.nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor | None
           ) -> torch.Tensor:
        assert y is not None
        return F.cross_entropy(m(**x), y)

    result = fit(module, ce, learnable(100), TrainSettings(
        epochs=2, lr=1e-2, batch_size=32, checkpoint_dir=out / "ckpt", checkpoint_every=3))
    rank, world = dist.get_rank(), dist.get_world_size()
    save_file({k: v.contiguous() for k, v in module.state_dict().items()},
              str(out / f"rank{rank}.safetensors"))

    # Token rows grouped by length and cut, with a linear schedule: ranks stay in lockstep.
    torch.manual_seed(7)
    table = torch.nn.Embedding(50, 4)
    widths: list[int] = []

    def spread(m: torch.nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor | None
               ) -> torch.Tensor:
        widths.append(x["ids"].shape[1])
        return m(x["ids"]).pow(2).mean() * x["ids"].shape[1]

    fit(table, spread, texts(), TrainSettings(epochs=1, lr=1e-2, batch_size=16,
                                              schedule="linear", mask="mask",
                                              sequence_columns=("ids",)))
    save_file({"weight": table.weight.detach().contiguous()},
              str(out / f"text{rank}.safetensors"))
    (out / f"widths{rank}.json").write_text(json.dumps(widths))
    if rank == 0:
        save_file(start, str(out / "start.safetensors"))
        (out / "result.json").write_text(json.dumps({"world": world, "steps": result.steps,
                                                     "history": result.history}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
