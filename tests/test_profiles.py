"""The documented switch to the paper's settings edits params.yaml in place, validated, comments kept."""

from __future__ import annotations

import shutil

import pytest

from pipeline.config import ConfigError, load_params
from pipeline.profiles import apply_profile
from tests.conftest import ROOT


def test_paper_profile(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_profile(ROOT / "configs" / "paper.yaml", params)
    p = load_params(params)
    assert (p.train.epochs, p.train.batch_size, p.train.lr, p.train.weight_decay) == (200, 128, 0.1, 1e-4)
    assert (p.train.schedule, p.train.milestones) == ("step", [100, 150])
    for m in ("resnet", "se_resnet", "cbam_resnet", "attn_resnet", "no_attention"):
        assert p.method(m).args["depth"] == 110 and p.method(m).args["width"] == 16
    assert p.method("no_attention").args["placement"] == "none"  # the ablation stays an ablation
    assert (p.method("densenet_bc").args["depth"], p.method("densenet_bc").args["growth_rate"]) == (100, 12)
    assert p.grid.datasets == ["cifar10", "cifar100"]
    inet = p.recipe("resnet", "imagenet")  # ImageNet's own recipe, on top of the shared one
    assert (inet.epochs, inet.batch_size, inet.milestones, inet.schedule) == (90, 256, [30, 60], "step")
    assert p.model_of("resnet", "imagenet") == ("resnet50", {}) and p.model_of("resnet", "cifar10")[0] == "resnet"
    assert p.model_of("no_attention", "imagenet")[1]["placement"] == "none"
    text = params.read_text()
    assert "# How the sum-to-1 softmax map" in text or "how the sum-to-1 softmax map" in text  # comments kept
    assert "&backbone" in text


def test_bad_profile_changes_nothing(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    before = params.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train.epochs: 10\ntrain.schedule: step\ntrain.milestones: [5, 20]\n")
    with pytest.raises(ConfigError, match=r"train\.milestones = \[5, 20\]: \[20\] at or past the last epoch"):
        apply_profile(bad, params)
    bad.write_text("trian.epochs: 10\n")
    with pytest.raises(ConfigError, match="no key 'trian'"):
        apply_profile(bad, params)
    assert params.read_text() == before
