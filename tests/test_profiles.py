"""The documented switch to the paper's settings edits params.yaml in place, validated, comments kept."""

from __future__ import annotations

import shutil

import pytest
from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

from pipeline.config import ConfigError
from pipeline.profiles import apply_overrides, apply_profile
from pipeline.profiles import main as profiles_main
from pipeline.settings import load_params
from tests.project import ROOT, make_project, run


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
    assert "&" not in text and "<<" not in text and "*" not in text.replace("# ", "")  # plain YAML, as DVC writes it


def test_bad_profile_changes_nothing(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    before = params.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train.epochs: 10\ntrain.schedule: step\ntrain.milestones: [5, 20]\n")
    with pytest.raises(ConfigError, match=r"train\.milestones = \[5, 20\]: \[20\] at or past the last epoch"):
        apply_profile(bad, params)
    bad.write_text("trian.epochs: 10\n")
    with pytest.raises(ConfigError, match=r"trian = \{'epochs': 10\}: not a setting \(did you mean `train`\?\)"):
        apply_profile(bad, params)
    assert params.read_text() == before


def test_the_shipped_params_are_a_fixed_point_of_dvcs_own_rewrite(tmp_path) -> None:
    """DVC rewrites the whole file on every `-S`: in its style, params.yaml comes back unchanged (no comment
    lost after a list, no null blanked, no long line folded), so an edit's diff is the edited lines only."""
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    p = load_params(params)
    same = [f"grid.{k}=[{','.join(map(str, getattr(p.grid, k)))}]" for k in ("datasets", "methods", "seeds")]
    dvc_apply_overrides(params, [*same, f"train.epochs={p.train.epochs}"])
    assert params.read_text() == (ROOT / "params.yaml").read_text()


@pytest.mark.slow
def test_dvc_exp_run_set_and_the_profile_tool_change_exactly_one_line(tmp_path) -> None:
    """`dvc exp run -S` (DVC's own path, running the cheap `check` stage) and `pipeline.profiles --set` give the
    same file, differing from the shipped one in exactly the line of the key set."""
    proj = make_project(tmp_path / "proj", {}, width=None)
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")  # make_project re-dumps it; test the shipped text
    run(["git", "commit", "-qam", "shipped params"], proj)
    run(["dvc", "exp", "run", "-S", "methods.resnet.args.depth=14", "check"], proj)
    diff = run(["git", "diff", "--numstat", "params.yaml"], proj).stdout.split()
    assert diff == ["1", "1", "params.yaml"]
    assert "    args: {depth: 14, width: 8}" in (proj / "params.yaml").read_text().splitlines()
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(["methods.resnet.args.depth=14"], "--set", params)
    assert params.read_bytes() == (proj / "params.yaml").read_bytes()


def test_profiles_set_edits_params_in_place_and_validates(tmp_path, monkeypatch) -> None:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert profiles_main(["--set", "compute.storage_path=s3://b/ray", "compute.shared_data=s3://b/data"]) == 0
    text = (tmp_path / "params.yaml").read_text()
    assert "storage_path: s3://b/ray" in text and "shared_data: s3://b/data" in text
    assert "# Every setting of the pipeline" in text  # comments kept
    assert profiles_main(["--set", "compute.shared_data=relative/dir"]) == 2  # not every node can read that
    assert profiles_main(["--set", "compute.nope=1"]) == 2
    assert (tmp_path / "params.yaml").read_text() == text  # a rejected edit writes nothing


def _section_comments(text: str) -> dict[str, list[str]]:
    """top-level key -> the comment lines directly above it."""
    lines, out = text.split("\n"), {}
    for i, line in enumerate(lines):
        if line[:1].isalpha():
            j = i
            while j > 0 and lines[j - 1].startswith("#"):
                j -= 1
            out[line] = lines[j:i]
    return out


def test_a_profile_keeps_section_comments_and_replaces_stale_ones(tmp_path) -> None:
    """Keys the profile adds to the last entry of a section (datasets.imagenet.train) stay in that entry, with
    the next section's comment still above the next section; a key's comment in the profile replaces the one
    params.yaml had (which described the old value); no flow mapping is wrapped across lines."""
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    before = params.read_text()
    apply_profile(ROOT / "configs" / "paper.yaml", params)
    after = params.read_text()
    assert _section_comments(after) == _section_comments(before)
    assert any(c for c in _section_comments(before).values())
    lines = after.splitlines()
    inet = next(i for i, ln in enumerate(lines) if ln.startswith("  imagenet:"))
    block = [ln for ln in lines[inet : lines.index("train:")] if ln and not ln.startswith("#")]
    assert block[-5:] == ["      epochs: 90", "      batch_size: 256", "      milestones:", "      - 30", "      - 60"]
    assert lines[lines.index(block[-1]) + 1] == ""  # then the blank line and the next section's comment
    (bn,) = [ln for ln in lines if ln.startswith("  bn_recalibration:")]
    profile_comment = next(ln for ln in (ROOT / "configs/paper.yaml").read_text().splitlines()
                           if ln.startswith("train.bn_recalibration:")).split("#", 1)[1]  # fmt: skip
    assert bn.startswith("  bn_recalibration: 0 ") and bn.endswith("#" + profile_comment)
    assert all(ln.count("{") == ln.count("}") for ln in lines)  # nothing wrapped
    assert load_params(params).train.bn_recalibration == 0
