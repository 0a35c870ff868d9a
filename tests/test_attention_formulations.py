"""The formulations the attention study compares (``pipeline.study``), each against a direct computation on
small tensors, each training its parameters; and the diagnostics that explain a collapse, on constructed maps
and on a real net."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models import create_model
from pipeline.models.attention import MAP_INITS, SCALINGS, SoftmaxAttention
from pipeline.models.diagnostics import PREFIX, diagnose, entropy_ratio


def _direct(m: SoftmaxAttention, x: torch.Tensor, temperature: float) -> torch.Tensor:
    """The module's output written out: conv, softmax over positions at the temperature, scaled, multiplied."""
    _, c, h, w = x.shape
    logits = F.conv2d(x, m.conv.weight, m.conv.bias, padding=m.conv.padding) / temperature  # (B, M, H, W)
    a = torch.exp(logits) / torch.exp(logits).sum((2, 3), keepdim=True)
    g = m.gate.item() if m.gate is not None else None
    scaled = {"none": a, "hw": h * w * a, "residual": 1 + h * w * a, "gated": 1 + (g or 0) * (h * w * a - 1)}
    a = scaled[m.scaling]
    groups = a.repeat_interleave(c // m.num_maps, dim=1)  # map k weights channels k*C/M .. (k+1)*C/M - 1
    return x * groups


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize(("temperature", "learned"), [(1.0, False), (4.0, False), (0.5, True)])
@pytest.mark.parametrize("num_maps", [1, 2])
def test_every_formulation_is_its_formula(scaling: str, temperature: float, learned: bool, num_maps: int) -> None:
    torch.manual_seed(0)
    m = SoftmaxAttention(
        4,
        num_maps=num_maps,
        kernel_size=3,
        scaling=scaling,
        temperature=temperature,
        learn_temperature=learned,
        map_init="random",
    )
    if m.gate is not None:
        m.gate.data.fill_(0.7)
    x = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(m(x), _direct(m, x, temperature), atol=1e-5, rtol=1e-5)
    assert (m.log_temperature is not None) == learned


@pytest.mark.parametrize(("scaling", "map_init"), list(itertools.product(SCALINGS, MAP_INITS)))
def test_every_option_trains_its_parameters(scaling: str, map_init: str) -> None:
    """One SGD step moves the map conv's weight; from a random (non-uniform) start also the gate and a learned
    temperature, which a uniform map makes irrelevant (its gradient is exactly 0 until the map moves)."""
    torch.manual_seed(0)
    m = SoftmaxAttention(4, scaling=scaling, learn_temperature=True, map_init=map_init)
    x = torch.randn(3, 4, 5, 5)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    (m(x) * torch.randn_like(x)).sum().backward()
    opt.step()
    moved = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    expect = {"conv.weight"}
    if map_init == "random":
        expect |= {"log_temperature"} | ({"gate"} if scaling == "gated" else set())
    assert expect <= moved, (expect, moved)


def test_map_inits_start_uniform_or_peaked() -> None:
    x = torch.randn(2, 8, 6, 6)
    torch.manual_seed(0)
    maps = {i: SoftmaxAttention(8, map_init=i).softmax(SoftmaxAttention(8, map_init=i).conv(x)) for i in MAP_INITS}
    torch.testing.assert_close(maps["zero"], torch.full_like(maps["zero"], 1 / 36))
    assert entropy_ratio(maps["random"]).max() < 0.999


def test_a_higher_temperature_flattens_the_map() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    ratios = []
    for t in (0.25, 1.0, 4.0):
        torch.manual_seed(1)
        m = SoftmaxAttention(8, temperature=t, map_init="random")
        maps = []  # the map the module itself makes at temperature t
        m.softmax.register_forward_hook(lambda mod, i, o, maps=maps: maps.append(o.detach()))
        m(x)
        ratios.append(float(entropy_ratio(maps[0]).mean()))
    assert ratios[0] < ratios[1] < ratios[2] <= 1.0


def test_stage_branch_keeps_the_shortcut_past_the_map() -> None:
    """Three modules in both placements, but on the trunk (``stage``) the literal map divides everything the
    next stage sees by about H*W, while in the residual branch (``stage_branch``) the shortcut carries the
    features past it."""
    torch.manual_seed(0)
    trunk = create_model("attn_resnet", depth=8, width=4, placement="stage", scaling="none").eval()
    torch.manual_seed(0)
    branch = create_model("attn_resnet", depth=8, width=4, placement="stage_branch", scaling="none").eval()
    names = [n for n, m in branch.named_modules() if isinstance(m, SoftmaxAttention)]
    assert names == ["stages.0.0.attn", "stages.1.0.attn", "stages.2.0.attn"]
    x = torch.randn(2, 3, 32, 32)
    plain = create_model("attn_resnet", depth=8, width=4, placement="none").eval()
    plain.load_state_dict({k: v for k, v in branch.state_dict().items() if "attn" not in k})
    feats = {
        n: net.forward_features(x).pow(2).mean().sqrt()
        for n, net in (("trunk", trunk), ("branch", branch), ("plain", plain))
    }
    assert feats["trunk"] < 1e-3 * feats["plain"]  # 1/1024, 1/256, 1/64 multiplied in on the trunk
    assert feats["branch"] > 0.3 * feats["plain"]


def test_entropy_ratio_of_constructed_maps() -> None:
    uniform = torch.full((2, 3, 4, 4), 1 / 16)
    one_hot = torch.zeros(2, 3, 4, 4)
    one_hot[..., 1, 2] = 1.0
    half = torch.zeros(1, 1, 4, 4)
    half[0, 0, 0, :2] = 0.5  # two positions of 16: log 2 / log 16
    torch.testing.assert_close(entropy_ratio(uniform), torch.ones(2, 3))
    torch.testing.assert_close(entropy_ratio(one_hot), torch.zeros(2, 3))
    torch.testing.assert_close(entropy_ratio(half), torch.tensor([[math.log(2) / math.log(16)]]))


def test_diagnostics_of_a_net_and_they_leave_training_alone() -> None:
    torch.manual_seed(0)
    net = create_model("attn_resnet", depth=8, width=4, placement="stage", scaling="none")
    bn = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = [(b.running_mean.clone(), b.num_batches_tracked.clone()) for b in bn]
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    d = diagnose(net, x, y)
    assert net.training  # left in the mode it was in
    assert all(p.grad is None for p in net.parameters())  # nothing accumulated: the next step is unchanged
    assert all(
        torch.equal(b.running_mean, m) and torch.equal(b.num_batches_tracked, n)
        for b, (m, n) in zip(bn, stats, strict=True)
    )
    for i, hw in enumerate((32 * 32, 16 * 16, 8 * 8)):  # uniform start, literal scaling: x / (H*W)
        name = f"{PREFIX}stage_attn.{i}"
        assert d[f"{name}/entropy"] == pytest.approx(1.0)
        assert d[f"{name}/scale"] == pytest.approx(1 / hw, rel=1e-4)
    # the gradients, against an ordinary backward pass of a copy in the same (eval) mode
    ref, inputs = copy.deepcopy(net).eval(), {}

    def keep_input(name: str):
        def hook(mod: nn.Module, i: tuple[torch.Tensor, ...], o: torch.Tensor) -> None:
            i[0].retain_grad()
            inputs[name] = i[0]

        return hook

    for name, m in ref.named_modules():
        if isinstance(m, SoftmaxAttention):
            m.register_forward_hook(keep_input(name))
    F.cross_entropy(ref(x), y).backward()
    for name, m in ref.named_modules():
        if isinstance(m, SoftmaxAttention):
            assert d[f"{PREFIX}{name}/map_grad"] == pytest.approx(float(m.conv.weight.grad.norm()), rel=1e-4)
            g = inputs[name].grad
            assert d[f"{PREFIX}{name}/in_grad"] == pytest.approx(float(g.pow(2).mean().sqrt()), rel=1e-4)
            assert d[f"{PREFIX}{name}/in_grad"] > 0
    assert d[f"{PREFIX}stem_grad"] == pytest.approx(float(ref.stem[0].weight.grad.norm()), rel=1e-4)
    assert d[f"{PREFIX}stem_grad"] > 0
    hw = diagnose(create_model("attn_resnet", depth=8, width=4, placement="stage", scaling="hw"), x, y)
    assert hw[f"{PREFIX}stage_attn.0/scale"] == pytest.approx(1.0)  # the identity at the uniform start
    # the starved gradient of the literal trunk placement, measured: orders of magnitude below hw's
    assert d[f"{PREFIX}stem_grad"] < 1e-2 * hw[f"{PREFIX}stem_grad"]
