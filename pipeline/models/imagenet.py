"""ImageNet networks: the ResNet-50 family (He et al. 2016) with the same attention plug-ins as the CIFAR
nets, and DenseNet-BC-121 (Huang et al. 2017), built from torchvision's own blocks.

Attention sits where the CIFAR ``ResNet`` puts it (see ``pipeline.models.resnet``): ``block`` -- in every
bottleneck after ``bn3``, before the shortcut is added (SE's and CBAM's place); ``stage`` -- after each of
the four stages, on the trunk; ``stage_branch`` -- in the last bottleneck of each stage, before its add;
``final`` -- after the last stage; ``none`` -- the plain backbone.

Deviations: none in the backbones (torchvision's ``Bottleneck`` -- stride on the 3x3 conv, "ResNet v1.5" --
and ``densenet121``). torchvision initialises every conv it finds, attention modules included, so each
attention module is re-initialised afterwards to its own starting point (the softmax map conv at zero).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import densenet121 as tv_densenet121
from torchvision.models.resnet import Bottleneck
from torchvision.models.resnet import ResNet as TVResNet

from .attention import ATTENTION_MODULES, get_attn
from .registry import register_model
from .resnet import PLACEMENTS, AttnLayer, Placement

RESNET50_LAYERS = (3, 4, 6, 3)


class AttnBottleneck(Bottleneck):
    """torchvision's bottleneck with ``attn_layer`` applied after ``bn3``, before the residual add."""

    attn_layer: AttnLayer = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        layer = type(self).attn_layer
        self.attn = layer(self.bn3.num_features) if layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.attn(self.bn3(self.conv3(out)))  # the one place block attention is applied
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _bottleneck_with(attn_layer: AttnLayer) -> type[Bottleneck]:
    """torchvision builds blocks as ``block(inplanes, planes, ...)``: bind the attention layer to a subclass."""
    return type("AttnBottleneck", (AttnBottleneck,), {"attn_layer": staticmethod(attn_layer) if attn_layer else None})


def _reinit_attention(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, ATTENTION_MODULES):
            m.reset_parameters()


class ImageNetResNet(nn.Module):
    """A torchvision ResNet (bottleneck blocks) with attention at ``placement``; 224x224 inputs."""

    def __init__(
        self,
        layers: tuple[int, ...] = RESNET50_LAYERS,
        num_classes: int = 1000,
        attn_layer: AttnLayer = None,
        placement: Placement = "block",
    ) -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement={placement!r}; allowed: {list(PLACEMENTS)}")
        if placement == "none":
            attn_layer = None
        block = _bottleneck_with(attn_layer if placement == "block" else None)
        self.net = TVResNet(block, list(layers), num_classes=num_classes)
        widths = [64 * 2**i * Bottleneck.expansion for i in range(4)]  # 256, 512, 1024, 2048
        if placement == "stage_branch" and attn_layer is not None:
            for stage, w in zip(
                (self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4), widths, strict=True
            ):
                stage[-1].attn = attn_layer(w)
        self.stage_attn = nn.ModuleList(
            attn_layer(w)
            if attn_layer is not None and (placement == "stage" or (placement == "final" and i == 3))
            else nn.Identity()
            for i, w in enumerate(widths)
        )
        _reinit_attention(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))  # (B, 64, 56, 56)
        for stage, attn in zip((n.layer1, n.layer2, n.layer3, n.layer4), self.stage_attn, strict=True):
            x = attn(stage(x))  # (B, 256, 56, 56) -> (B, 512, 28, 28) -> (B, 1024, 14, 14) -> (B, 2048, 7, 7)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.fc(self.forward_features(x).mean((2, 3)))  # (B, num_classes)


@register_model
def resnet50(num_classes: int = 1000) -> ImageNetResNet:
    """ResNet-50 (He et al. 2016): 25.6 M parameters at 1000 classes, as torchvision's."""
    return ImageNetResNet(RESNET50_LAYERS, num_classes)


@register_model
def se_resnet50(num_classes: int = 1000, reduction: int = 16, rd_divisor: int = 1) -> ImageNetResNet:
    """SE-ResNet-50 (Hu et al. 2018): an SE module in every bottleneck; 28.1 M parameters."""
    layer = get_attn("se", reduction=reduction, rd_divisor=rd_divisor)
    return ImageNetResNet(RESNET50_LAYERS, num_classes, layer, "block")


@register_model
def cbam_resnet50(
    num_classes: int = 1000, reduction: int = 16, spatial_kernel: int = 7, rd_divisor: int = 1
) -> ImageNetResNet:
    """CBAM-ResNet-50 (Woo et al. 2018): channel + spatial attention in every bottleneck; 28.1 M parameters."""
    layer = get_attn("cbam", reduction=reduction, spatial_kernel=spatial_kernel, rd_divisor=rd_divisor)
    return ImageNetResNet(RESNET50_LAYERS, num_classes, layer, "block")


@register_model
def attn_resnet50(
    num_classes: int = 1000,
    placement: Placement = "final",
    num_maps: int = 1,
    kernel_size: int = 1,
    scaling: str = "hw",
    temperature: float = 1.0,
    learn_temperature: bool = False,
    map_init: str = "zero",
) -> ImageNetResNet:
    """The paper's attention CNN on a ResNet-50 backbone; ``placement='none'`` is its ablation. The attention
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
    return ImageNetResNet(RESNET50_LAYERS, num_classes, layer, placement)


@register_model
def densenet121(num_classes: int = 1000) -> nn.Module:
    """DenseNet-BC-121 for ImageNet (Huang et al. 2017: k=32, bottleneck + compression 0.5), torchvision's."""
    return tv_densenet121(num_classes=num_classes)
