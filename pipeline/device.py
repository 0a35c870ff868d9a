"""How a net meets a device: its uint8 input standardised (``normalize``), and the fast-path switches resolved
for the device it runs on (``FastPath``: bf16 autocast, channels_last, torch.compile, data kept on the device).

A leaf that needs torch alone: the training engine, the serving wrapper, the planner's probe and the GPU
benchmark (``benchmarks/fast_path.py``, run where only torch is installed) share it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # type hints only: this module runs with torch alone
    from pipeline.config import FastPathCfg

CPU = torch.device("cpu")


@dataclass(frozen=True)
class FastPath:
    """Resolved fast-path switches (see ``FastPathCfg``); all off is plain eager fp32."""

    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    data_on_device: bool = False

    @classmethod
    def resolve(cls, cfg: FastPathCfg, device: torch.device) -> FastPath:
        cuda = device.type == "cuda"
        return cls.of(cfg, cuda=cuda, bf16=cuda and torch.cuda.is_bf16_supported())

    @classmethod
    def of(cls, cfg: FastPathCfg, *, cuda: bool, bf16: bool) -> FastPath:
        """The one rule for ``auto``: every switch on with a CUDA GPU (bf16 where it has it), off otherwise; the
        planner applies it to a GPU it only names (``pipeline.devices``)."""
        auto = {"bf16": cuda and bf16, "channels_last": cuda, "compile": cuda, "data_on_device": cuda}
        return cls(**{k: auto[k] if v == "auto" else bool(v) for k, v in cfg.model_dump().items()})

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        # no autocast context at all when off: entering even a disabled one costs time per step on CPUs
        return torch.autocast(device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model in the chosen memory format (in place; parameters keep their identity)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


EAGER = FastPath()


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, standardised per channel (mean/std on the [0, 1] scale)."""
    return (x.float() / 255.0 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
