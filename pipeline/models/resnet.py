"""CIFAR ResNets (He et al. 2016, Sec. 4.2) with pluggable attention.

SE-, CBAM- and the paper's attention ResNets are settings of one ``ResNet``, not subclasses: the network
takes an attention layer and a placement, and applies it in one fixed place per placement (timm
``models/resnet.py``):

* ``block`` -- inside every residual block, after the last BN and before the shortcut is added
  (where SE and CBAM put it);
* ``stage`` -- after every stage of blocks ("attention modules after certain convolutional layers [...]
  the process is repeated for subsequent attention modules", paper Sec. 3.1);
* ``final`` -- one module after the last stage, before pooling ("a single attention module at the end of
  the network", paper Sec. 7.2);
* ``none``  -- no attention: the ablation "CNN without attention" (paper Tables 2 and 4).

Deviation from He et al.: shortcuts that change shape are 1x1 conv + BN projections (option B), as in
most PyTorch reproductions, not zero-padding (option A); ResNet-110 has 1.73 M parameters either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .attention import get_attn
from .registry import register_model

Placement = Literal["block", "stage", "final", "none"]
PLACEMENTS: tuple[str, ...] = ("block", "stage", "final", "none")
AttnLayer = Callable[[int], nn.Module] | None


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, attn_layer: AttnLayer = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.attn = attn_layer(out_ch) if attn_layer is not None else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.attn(self.bn2(self.conv2(out)))  # the one place block attention is applied
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2: a 3x3 stem and three stages of n basic blocks at widths w, 2w, 4w."""

    def __init__(
        self,
        depth: int = 110,
        num_classes: int = 10,
        width: int = 16,
        attn_layer: AttnLayer = None,
        placement: Placement = "block",
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth={depth} must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110, ...)")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement={placement!r}; allowed: {list(PLACEMENTS)}")
        if placement == "none":
            attn_layer = None
        n = (depth - 2) // 6
        widths = (width, 2 * width, 4 * width)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        block_attn = attn_layer if placement == "block" else None
        stages, stage_attn = [], []
        in_ch = width
        for i, w in enumerate(widths):
            blocks = [
                BasicBlock(in_ch if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1, block_attn) for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            after = placement == "stage" or (placement == "final" and i == len(widths) - 1)
            stage_attn.append(attn_layer(w) if (after and attn_layer is not None) else nn.Identity())
            in_ch = w
        self.stages = nn.ModuleList(stages)
        self.stage_attn = nn.ModuleList(stage_attn)
        self.fc = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # backbone only: attention modules own their initialisation
        for name, m in self.named_modules():
            if "attn" in name:
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, w, 32, 32)
        for stage, attn in zip(self.stages, self.stage_attn, strict=True):
            x = attn(stage(x))  # (B, w, 32, 32) -> (B, 2w, 16, 16) -> (B, 4w, 8, 8)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))  # (B, num_classes)


@register_model
def resnet(depth: int = 110, num_classes: int = 10, width: int = 16) -> ResNet:
    """ResNet (He et al. 2016); depth 110 is the paper's baseline."""
    return ResNet(depth, num_classes, width)


@register_model
def se_resnet(depth: int = 110, num_classes: int = 10, width: int = 16, reduction: int = 16) -> ResNet:
    """SE-ResNet (Hu et al. 2018): an SE module in every block."""
    return ResNet(depth, num_classes, width, get_attn("se", reduction=reduction), "block")


@register_model
def cbam_resnet(
    depth: int = 110, num_classes: int = 10, width: int = 16, reduction: int = 16, spatial_kernel: int = 7
) -> ResNet:
    """CBAM-ResNet (Woo et al. 2018): channel + spatial attention in every block."""
    return ResNet(
        depth, num_classes, width, get_attn("cbam", reduction=reduction, spatial_kernel=spatial_kernel), "block"
    )


@register_model
def attn_resnet(
    depth: int = 110,
    num_classes: int = 10,
    width: int = 16,
    placement: Placement = "stage",
    num_maps: int = 1,
    kernel_size: int = 1,
    scaling: str = "hw",
) -> ResNet:
    """The paper's attention CNN on a ResNet backbone; ``placement='none'`` is its ablation."""
    layer = get_attn("softmax", num_maps=num_maps, kernel_size=kernel_size, scaling=scaling)
    return ResNet(depth, num_classes, width, layer, placement)
