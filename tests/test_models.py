"""Every registered model: shape, finiteness, gradients; published parameter counts; attention maps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.config import ConfigError
from pipeline.evaluate import attention_maps
from pipeline.models import create_attn, create_model, list_models, register_model
from pipeline.models.attention import SCALINGS, CbamModule, SEModule, SoftmaxAttention, gate_width
from pipeline.models.checks import validate_all
from pipeline.models.resnet import PLACEMENTS

# small configurations so the loop over the registry stays fast; depth is a parameter of every model
IMAGENET = ("resnet50", "se_resnet50", "cbam_resnet50", "attn_resnet50", "densenet121")  # fixed depth
SMALL = {"densenet_bc": {"depth": 10, "growth_rate": 4}, **{n: {} for n in IMAGENET}}
SMALL_DEFAULT = {"depth": 8, "width": 4}


def small(name: str, **kw) -> nn.Module:
    return create_model(name, **{**SMALL.get(name, SMALL_DEFAULT), **kw})


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = small(name, num_classes=7)
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: parameters without a finite gradient: {missing}"


@pytest.mark.parametrize("placement", [p for p in PLACEMENTS if p != "none"])
@pytest.mark.parametrize("scaling", SCALINGS)
def test_attention_variants_get_gradients(placement: str, scaling: str) -> None:
    """Every placement x scaling option is a working network whose attention parameters all learn."""
    torch.manual_seed(0)
    model = create_model("attn_resnet", depth=8, width=4, placement=placement, scaling=scaling, num_maps=2)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    attn = [(n, p) for n, p in model.named_parameters() if "attn" in n]
    assert attn, "no attention parameters found"
    assert all(p.grad is not None for _, p in attn)
    n_modules = sum(isinstance(m, SoftmaxAttention) for m in model.modules())
    assert n_modules == {"block": 3, "stage": 3, "stage_branch": 3, "final": 1}[placement]


def test_placement_none_is_the_plain_backbone() -> None:
    ablation = create_model("attn_resnet", depth=20, placement="none")
    assert not any(isinstance(m, SoftmaxAttention) for m in ablation.modules())
    assert n_params(ablation) == n_params(create_model("resnet", depth=20))


@pytest.mark.parametrize("placement", ["stage", "final", "block"])
def test_attention_maps_sum_to_one_before_scaling(placement: str) -> None:
    torch.manual_seed(0)
    model = create_model("attn_resnet", depth=8, width=4, placement=placement, num_maps=2)
    for m in model.modules():  # random maps, not the uniform start, so the check means something
        if isinstance(m, SoftmaxAttention):
            nn.init.normal_(m.conv.weight, std=1.0)
    maps = attention_maps(model, torch.randn(4, 3, 32, 32))
    assert len(maps) >= 1
    for name, a in maps:
        assert a.shape[:2] == (4, 2), name
        sums = a.flatten(2).sum(-1)  # (B, M)
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
        assert (a.amax((2, 3)) > 1.5 / a[0, 0].numel()).all(), f"{name}: maps are uniform, test is vacuous"


def test_scalings_against_the_formulas() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5)
    mods = {s: SoftmaxAttention(4, scaling=s) for s in SCALINGS}
    for m in mods.values():
        nn.init.normal_(m.conv.weight)
        m.conv.weight.data.copy_(mods["none"].conv.weight.data)
    a = mods["none"].softmax(mods["none"].conv(x))  # (2, 1, 5, 5)
    torch.testing.assert_close(mods["none"](x), x * a)
    torch.testing.assert_close(mods["hw"](x), x * a * 25)
    torch.testing.assert_close(mods["residual"](x), x * (1 + a * 25))
    mods["gated"].gate.data.fill_(0.5)
    torch.testing.assert_close(mods["gated"](x), x * (1 + 0.5 * (a * 25 - 1)))


def test_attention_starts_as_identity() -> None:
    """Zero-initialised map conv: uniform maps, so hw and gated modules start as the identity."""
    x = torch.randn(2, 8, 6, 6)
    for s in ("hw", "gated"):
        torch.testing.assert_close(SoftmaxAttention(8, scaling=s)(x), x)


def test_published_parameter_counts() -> None:
    # He et al. 2016 (ResNet-110: 1.7M), Huang et al. 2017 (DenseNet-BC L=100 k=12: 0.8M)
    assert abs(n_params(create_model("resnet", depth=110)) - 1.7e6) / 1.7e6 < 0.02
    assert 0.76e6 <= n_params(create_model("densenet_bc", depth=100, growth_rate=12)) <= 0.80e6


def test_option_a_shortcuts_match_he_et_al() -> None:
    """He et al.'s own CIFAR ResNet-110: zero-padding shortcuts, 1,727,962 parameters at 10 classes."""
    assert n_params(create_model("resnet", depth=110, shortcut="A")) == 1_727_962
    x = torch.randn(2, 16, 8, 8)
    from pipeline.models.resnet import PadShortcut

    y = PadShortcut(16, 32, 2)(x)  # subsampled identity, the new channels zero on both sides
    assert y.shape == (2, 32, 4, 4) and torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()
    with pytest.raises(ValueError, match="shortcut='C'; allowed: \\['A', 'B'\\]"):
        create_model("resnet", depth=8, shortcut="C")


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_one_seed_one_backbone_whatever_the_attention(shortcut: str) -> None:
    """For one seed, the ResNet family starts from identical backbone weights (so its per-seed results pair
    up), and the digest the training records says so; a different seed or DenseNet differs."""
    from pipeline.models import backbone_digest

    def built(name: str, seed: int = 3, **kw) -> nn.Module:
        torch.manual_seed(seed)
        return small(name, shortcut=shortcut, **kw)

    nets = [built("resnet"), built("se_resnet"), built("cbam_resnet")]
    nets += [built("attn_resnet", placement=p) for p in PLACEMENTS]
    ref = {k: v for k, v in nets[0].state_dict().items()}
    for net in nets[1:]:
        shared = {k: v for k, v in net.state_dict().items() if k in ref}
        assert shared.keys() == ref.keys() and all(torch.equal(v, ref[k]) for k, v in shared.items())
        assert backbone_digest(net) == backbone_digest(nets[0])
    assert backbone_digest(built("resnet", seed=4)) != backbone_digest(nets[0])
    torch.manual_seed(3)
    assert backbone_digest(small("densenet_bc")) != backbone_digest(nets[0])


def test_published_imagenet_parameter_counts() -> None:
    import torchvision

    base = n_params(create_model("resnet50"))
    assert base == n_params(torchvision.models.resnet50())  # 25,557,032
    # Hu et al. 2018, Table 2: SE-ResNet-50 28.1 M; Woo et al. 2018, Table 4: CBAM-ResNet-50 28.09 M
    assert abs(n_params(create_model("se_resnet50")) - 28.1e6) / 28.1e6 < 0.02
    assert abs(n_params(create_model("cbam_resnet50")) - 28.09e6) / 28.09e6 < 0.02
    assert abs(n_params(create_model("densenet121")) - 7.98e6) / 7.98e6 < 0.02  # Huang et al. 2017, DenseNet-BC-121
    assert 0 < n_params(create_model("attn_resnet50")) / base - 1 < 0.01
    assert n_params(create_model("attn_resnet50", placement="none")) == base


def test_flop_counts_come_from_torch_and_match_published_figures() -> None:
    from pipeline.evaluate import flops_per_image

    # ResNet-50 at 224x224: 4.1 G multiply-adds (He et al. 2016, Table 1), so ~8.2 GFLOPs
    assert 8.0e9 < flops_per_image(create_model("resnet50"), torch.randn(1, 3, 224, 224)) < 8.4e9
    # ResNet-110 on CIFAR: ~0.25 G multiply-adds per 32x32 image
    assert 0.48e9 < flops_per_image(create_model("resnet", depth=110), torch.randn(1, 3, 32, 32)) < 0.54e9


@pytest.mark.parametrize("placement", [p for p in PLACEMENTS if p != "none"])
def test_imagenet_attention_maps_sum_to_one_and_start_as_identity(placement: str) -> None:
    torch.manual_seed(0)
    model = create_model("attn_resnet50", num_classes=5, placement=placement).eval()
    plain = create_model("resnet50", num_classes=5).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "attn" not in k})
    x = torch.randn(2, 3, 64, 64)
    maps = attention_maps(model, x)
    assert len(maps) == {"block": 16, "stage": 4, "stage_branch": 4, "final": 1}[placement]
    for _, a in maps:
        torch.testing.assert_close(a.sum((2, 3)), torch.ones(a.shape[:2]))
    torch.testing.assert_close(model(x), plain(x))  # zero-initialised map conv: uniform maps, scaling hw = 1


def test_attention_is_cheap_and_se_cbam_use_paper_reductions() -> None:
    base = n_params(create_model("resnet", depth=110))
    assert n_params(create_model("attn_resnet", depth=110)) / base - 1 < 0.01
    # SE, reduction 16, hidden width C//16 with no rounding up: 2*C*(C//16) + C + C//16 per block
    se_extra = sum(18 * (2 * c * (c // 16) + c + c // 16) for c in (16, 32, 64))
    assert n_params(create_model("se_resnet", depth=110)) - base == se_extra
    cbam_extra = se_extra + 54 * (2 * 7 * 7 + 1)  # + a 7x7 conv from 2 maps to 1 in each of 54 blocks
    assert n_params(create_model("cbam_resnet", depth=110)) - base == cbam_extra


def test_one_gate_width_rule_timms_at_small_sizes_the_papers_literal_at_theirs() -> None:
    # timm's make_divisible(C / 16, 8): nearest multiple of 8, never below 8; rd_divisor 1: the literal C // 16
    assert [gate_width(c, 16, 8) for c in (8, 16, 32, 64, 256, 2048)] == [8, 8, 8, 8, 16, 128]
    assert [gate_width(c, 16, 1) for c in (8, 16, 32, 64, 256, 2048)] == [1, 1, 2, 4, 16, 128]
    assert gate_width(200, 16, 8) == 16 and gate_width(8, 4, 8) == 8  # 12.5 -> 16; 2 -> at least 8
    for model in ("se_resnet", "cbam_resnet", "se_resnet50", "cbam_resnet50"):
        small = {} if model.endswith("50") else {"depth": 8, "width": 8}
        for d in (1, 8):
            net = create_model(model, rd_divisor=d, **small)
            gates = [m for m in net.modules() if isinstance(m, (SEModule, CbamModule))]
            assert gates, model
            for g in gates:  # every gate, SE's and CBAM's channel MLP alike, follows the one rule
                fc = g.fc1 if isinstance(g, SEModule) else g.mlp[0]
                assert fc.out_channels == gate_width(fc.in_channels, 16, d), (model, d)


def test_a_crippled_gate_is_refused_at_check_and_the_shipped_settings_pass(raw_params) -> None:
    validate_all(copy.deepcopy(raw_params))  # the small default: timm's rule
    raw_params["methods"]["se_resnet"]["args"]["rd_divisor"] = 1
    with pytest.raises(ConfigError) as e:
        validate_all(raw_params)
    msg = str(e.value)
    assert "methods.se_resnet.args.rd_divisor = 1: 'se_resnet' at width 8 has channel gates 1 of 8 channels" in msg
    assert "Allowed: rd_divisor: 8" in msg and "cbam_resnet" not in msg


def test_registry_rejects_duplicates_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model(_duplicate_resnet())
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*registered"):
        create_model("nope")
    with pytest.raises(ValueError, match="unknown attention type"):
        create_attn("nope", 8)
    with pytest.raises(ValueError, match="depth=9"):
        create_model("resnet", depth=9)


def _duplicate_resnet():
    def resnet() -> nn.Module:  # same name as the registered factory
        return nn.Identity()

    return resnet


# Arguments whose other values change what a CIFAR net computes (structure, a module's setting or its start)
ALTERNATIVES = {
    "resnet": {"depth": [14], "width": [4], "shortcut": ["A"]},
    "se_resnet": {"reduction": [4]},
    "cbam_resnet": {"reduction": [4], "spatial_kernel": [3]},
    "attn_resnet": {
        "placement": ["stage", "none"],
        "scaling": ["none", "residual", "gated"],
        "temperature": [2.0],
        "learn_temperature": [True],
        "map_init": ["random"],
        "num_maps": [2],
        "kernel_size": [3],
    },
    "densenet_bc": {"growth_rate": [4], "depth": [16]},
}
BASE = {"resnet": {"depth": 8, "width": 8}, "densenet_bc": {"depth": 10, "growth_rate": 8}}


def _digest(name: str, seed: int = 0, **args) -> str:
    from pipeline.models.digest import network_digest

    torch.manual_seed(seed)
    return network_digest(create_model(name, num_classes=10, **args))


def _outputs(name: str, x: torch.Tensor, seed: int = 0, **args) -> torch.Tensor:
    torch.manual_seed(seed)
    net = create_model(name, num_classes=10, **args).eval()
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("name", sorted(ALTERNATIVES))
def test_network_digest_tells_apart_nets_that_compute_differently(name: str) -> None:
    """Training units are keyed on the network digest (pipeline.spec): two settings that compute differently
    must never share a digest, or one would be served the other's trained net. Each alternative value changes
    what the net computes, at its start or once trained (a softmax temperature over a zero-initialised map
    changes nothing until the map learns), and must change the digest."""
    base = BASE.get(name, BASE["resnet"])
    ref_digest = _digest(name, **base)
    assert _digest(name, **base) == ref_digest  # deterministic
    assert _digest(name, seed=1, **base) != ref_digest  # another start
    for arg, values in ALTERNATIVES[name].items():
        for v in values:
            args = {**base, arg: v}
            if arg == "scaling" and v == "gated":
                args["placement"] = "final"
            assert _digest(name, **args) != ref_digest, (name, arg, v)


def test_network_digest_of_settings_that_build_the_same_net() -> None:
    """The ablation (attention placement none) is the plain ResNet, weight for weight: one digest, so the
    two methods train one unit; its outputs agree."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for args in ({"depth": 8, "width": 8}, {"depth": 14, "width": 4, "shortcut": "A"}):
        assert _digest("resnet", **args) == _digest("attn_resnet", placement="none", scaling="gated", **args)
        assert torch.equal(_outputs("resnet", x, **args), _outputs("attn_resnet", x, placement="none", **args))
    # the scaling of an attention module that is not there changes nothing; where it is there, it does
    assert _digest("attn_resnet", placement="final", scaling="hw") != _digest("attn_resnet", scaling="none")
    assert _digest("se_resnet", reduction=4) != _digest("cbam_resnet", reduction=4)
