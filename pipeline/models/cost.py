"""What a network costs to run, measured with torch alone (the benchmarks use it on bare GPU machines)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def flops_per_image(model: nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs for one image, counted by ``torch.utils.flop_counter`` (a multiply-add is 2 FLOPs)."""
    with FlopCounterMode(display=False) as counter:
        model.eval()(x[:1])
    return int(counter.get_total_flops())
