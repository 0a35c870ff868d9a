"""DenseNet-BC for CIFAR (Huang et al. 2017, Sec. 3-4), built from torchvision's dense block and transition.

Deviation: torchvision's dense layers hold ``memory_efficient=False``; results are the same, memory is not.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.densenet import _DenseBlock, _Transition

from .registry import register_model


class DenseNetBC(nn.Module):
    """Three dense blocks of (depth-4)/6 bottleneck layers, compression ``compression`` between them."""

    def __init__(self, depth: int = 100, growth_rate: int = 12, num_classes: int = 10, compression: float = 0.5):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth={depth} must be 6n+4 with n >= 1 (10, 22, 40, 100, 190, ...)")
        if growth_rate < 1:
            raise ValueError(f"growth_rate={growth_rate} must be >= 1 (the paper's DenseNet-BC: 12 or 24)")
        if not 0 < compression <= 1:
            raise ValueError(f"compression={compression} must be in (0, 1]")
        n = (depth - 4) // 6
        ch = 2 * growth_rate
        layers: list[nn.Module] = [nn.Conv2d(3, ch, 3, 1, 1, bias=False)]  # (B, 2k, 32, 32)
        for i in range(3):
            layers.append(_DenseBlock(n, ch, bn_size=4, growth_rate=growth_rate, drop_rate=0.0))
            ch += n * growth_rate
            if i < 2:
                out = int(ch * compression)
                layers.append(_Transition(ch, out))  # halves H, W
                ch = out
        layers += [nn.BatchNorm2d(ch), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))  # (B, num_classes)


@register_model
def densenet_bc(depth: int = 100, growth_rate: int = 12, num_classes: int = 10, compression: float = 0.5) -> DenseNetBC:
    """DenseNet-BC (Huang et al. 2017); L=100, k=12 is the paper's baseline."""
    return DenseNetBC(depth, growth_rate, num_classes, compression)
