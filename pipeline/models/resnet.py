"""CIFAR ResNets (He et al. 2016, Sec. 4.2) with pluggable attention.

SE-, CBAM- and the paper's attention ResNets are settings of one ``ResNet``, not subclasses: the network
takes an attention layer and a placement, and applies it in one fixed place per placement (timm
``models/resnet.py``):

* ``block`` -- inside every residual block, after the last BN and before the shortcut is added
  (where SE and CBAM put it);
* ``stage`` -- after every stage of blocks, on the trunk ("attention modules after certain convolutional
  layers [...] the process is repeated for subsequent attention modules", paper Sec. 3.1): everything the
  next stage sees has passed through the map;
* ``stage_branch`` -- one module per stage as well, but inside the residual branch of the stage's last block,
  before the add: the shortcut carries the unweighted features past it (not in the paper; the placement
  Residual Attention Networks and SE argue for, and the study of ``pipeline.study`` compares with ``stage``);
* ``final`` -- one module after the last stage, before pooling ("a single attention module at the end of
  the network", paper Sec. 7.2);
* ``none``  -- no attention: the ablation "CNN without attention" (paper Tables 2 and 4).

Shortcuts that change shape: ``shortcut="B"`` (default) is a 1x1 conv + BN projection, as in most PyTorch
reproductions; ``"A"`` is He et al.'s own CIFAR choice (Sec. 4.2): the identity, subsampled, with zero-padded
extra channels (no parameters; ResNet-110: 1,727,962 parameters at 10 classes, against 1,730,714 with B).

Initialisation: the backbone (every conv and the classifier, not the attention modules) is drawn from its
own generator, seeded by one draw from the global RNG. So for one seed, ResNet, SE-, CBAM- and attention
ResNet and the ablation start from identical backbone weights whatever attention they hold, and their
per-seed results can be compared as pairs (``pipeline.stats``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ATTENTION_MODULES, get_attn
from .registry import register_model

Placement = Literal["block", "stage", "stage_branch", "final", "none"]
Shortcut = Literal["A", "B"]
SHORTCUTS: tuple[str, ...] = ("A", "B")
PLACEMENTS: tuple[str, ...] = ("block", "stage", "stage_branch", "final", "none")
AttnLayer = Callable[[int], nn.Module] | None


class PadShortcut(nn.Module):
    """He et al.'s option A: the input subsampled by ``stride``, its extra channels zeros (split both sides)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, attn_layer: AttnLayer = None, shortcut: Shortcut = "B"
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.attn = attn_layer(out_ch) if attn_layer is not None else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if (stride != 1 or in_ch != out_ch) and shortcut == "A":
            self.shortcut = PadShortcut(in_ch, out_ch, stride)
        elif stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.attn(self.bn2(self.conv2(out)))  # the one place block attention is applied
        return F.relu(out + self.shortcut(x))


def _block_attn(placement: Placement, attn_layer: AttnLayer, j: int, n: int) -> AttnLayer:
    """The attention layer of block ``j`` of a stage of ``n`` blocks: every block's under ``block``, the last
    block's under ``stage_branch``, none otherwise."""
    return attn_layer if placement == "block" or (placement == "stage_branch" and j == n - 1) else None


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2: a 3x3 stem and three stages of n basic blocks at widths w, 2w, 4w."""

    def __init__(
        self,
        depth: int = 110,
        num_classes: int = 10,
        width: int = 16,
        attn_layer: AttnLayer = None,
        placement: Placement = "block",
        shortcut: Shortcut = "B",
    ):
        super().__init__()
        # one draw, whatever the attention: the backbone's weights come from this seed alone (see _init_weights)
        init_seed = int(torch.randint(0, 2**62, (1,)).item())
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r}; allowed: {list(SHORTCUTS)} (A: zero-padding, B: projection)")
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth={depth} must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110, ...)")
        if width < 1:
            raise ValueError(f"width={width} must be >= 1 (the first stage's channels; the paper's is 16)")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement={placement!r}; allowed: {list(PLACEMENTS)}")
        if placement == "none":
            attn_layer = None
        n = (depth - 2) // 6
        widths = (width, 2 * width, 4 * width)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, stage_attn = [], []
        in_ch = width
        for i, w in enumerate(widths):
            blocks = [
                BasicBlock(
                    in_ch if j == 0 else w,
                    w,
                    2 if (i > 0 and j == 0) else 1,
                    _block_attn(placement, attn_layer, j, n),
                    shortcut,
                )
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            after = placement == "stage" or (placement == "final" and i == len(widths) - 1)
            stage_attn.append(attn_layer(w) if (after and attn_layer is not None) else nn.Identity())
            in_ch = w
        self.stages = nn.ModuleList(stages)
        self.stage_attn = nn.ModuleList(stage_attn)
        self.fc = nn.Linear(widths[-1], num_classes)
        self._init_weights(torch.Generator().manual_seed(init_seed))

    def _init_weights(self, gen: torch.Generator) -> None:
        """Backbone only, in module order, from ``gen``: attention modules own their initialisation."""
        attention = {id(x) for a in self.modules() if isinstance(a, ATTENTION_MODULES) for x in a.modules()}
        for m in self.modules():
            if id(m) in attention:  # initialised by the module itself (reset_parameters)
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):  # torch's own Linear default, drawn from gen
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                bound = 1 / math.sqrt(m.in_features)
                nn.init.uniform_(m.bias, -bound, bound, generator=gen)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, w, 32, 32)
        for stage, attn in zip(self.stages, self.stage_attn, strict=True):
            x = attn(stage(x))  # (B, w, 32, 32) -> (B, 2w, 16, 16) -> (B, 4w, 8, 8)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))  # (B, num_classes)


@register_model
def resnet(depth: int = 110, num_classes: int = 10, width: int = 16, shortcut: Shortcut = "B") -> ResNet:
    """ResNet (He et al. 2016); depth 110 is the paper's baseline."""
    return ResNet(depth, num_classes, width, shortcut=shortcut)


@register_model
def se_resnet(
    depth: int = 110,
    num_classes: int = 10,
    width: int = 16,
    reduction: int = 16,
    shortcut: Shortcut = "B",
    rd_divisor: int = 1,
) -> ResNet:
    """SE-ResNet (Hu et al. 2018): an SE module in every block; gate width by ``attention.gate_width``."""
    layer = get_attn("se", reduction=reduction, rd_divisor=rd_divisor)
    return ResNet(depth, num_classes, width, layer, "block", shortcut)


@register_model
def cbam_resnet(
    depth: int = 110,
    num_classes: int = 10,
    width: int = 16,
    reduction: int = 16,
    spatial_kernel: int = 7,
    shortcut: Shortcut = "B",
    rd_divisor: int = 1,
) -> ResNet:
    """CBAM-ResNet (Woo et al. 2018): channel + spatial attention in every block; gate width by
    ``attention.gate_width``."""
    layer = get_attn("cbam", reduction=reduction, spatial_kernel=spatial_kernel, rd_divisor=rd_divisor)
    return ResNet(depth, num_classes, width, layer, "block", shortcut)


@register_model
def attn_resnet(
    depth: int = 110,
    num_classes: int = 10,
    width: int = 16,
    placement: Placement = "final",
    num_maps: int = 1,
    kernel_size: int = 1,
    scaling: str = "hw",
    shortcut: Shortcut = "B",
    temperature: float = 1.0,
    learn_temperature: bool = False,
    map_init: str = "zero",
) -> ResNet:
    """The paper's attention CNN on a ResNet backbone; ``placement='none'`` is its ablation. The attention
    options are ``pipeline.models.attention.SoftmaxAttention``'s."""
    layer = get_attn(
        "softmax",
        num_maps=num_maps,
        kernel_size=kernel_size,
        scaling=scaling,
        temperature=temperature,
        learn_temperature=learn_temperature,
        map_init=map_init,
    )
    return ResNet(depth, num_classes, width, layer, placement, shortcut)
