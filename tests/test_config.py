"""Settings validation: every bad value is named with its key, the value and what is allowed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipeline.compute import resolve_workers
from pipeline.config import ComputeCfg, ConfigError
from pipeline.models.checks import validate_all
from pipeline.profiles import apply_profile
from pipeline.settings import load_params
from tests.project import ROOT


def errors_for(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        validate_all(raw)
    return str(e.value)


def test_shipped_params_are_valid() -> None:
    p = load_params(ROOT / "params.yaml")
    assert set(p.grid.methods) <= set(p.methods)
    assert p.method("no_attention").args["placement"] == "none"
    # the YAML merge keys give the ablation exactly the attention method's other settings
    assert {k: v for k, v in p.method("no_attention").args.items() if k != "placement"} == {
        k: v for k, v in p.method("attn_resnet").args.items() if k != "placement"
    }


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("train", "lr"), -0.1, r"train\.lr = -0\.1: Input should be greater than 0"),
        (("train", "epochs"), 0, r"train\.epochs = 0: Input should be greater than 0"),
        (("train", "schedule"), "linear", r"train\.schedule = 'linear': Input should be 'step' or 'cosine'"),
        (("compute", "num_workers"), -2, r"compute\.num_workers = -2"),
        (("tune", "space", "train.lr", "low"), 0.0, r"tune\.space\.train\.lr.*low > 0"),
        (("datasets", "embedded", "kind"), "cifar", r"datasets\.embedded\.kind = 'cifar'.*embedded, cifar10"),
        (
            ("datasets", "cifar10", "fetch", "checksum"),
            "md5:123",
            r"datasets\.cifar10\.fetch\.checksum = 'md5:123'.*32",
        ),
        (("datasets", "cifar100", "preprocess", "subset"), {"train": 1.5}, r"subset\.train = 1\.5: allowed: .*count"),
        (("datasets", "cifar100", "preprocess", "subset"), {"test": 0}, r"subset\.test = 0: allowed"),
        (
            ("datasets", "imagenet", "preprocess", "image_size"),
            300,
            r"imagenet\.preprocess\.image_size = 300.*<= resize",
        ),
        (
            ("datasets", "imagenet", "preprocess", "on_bad_image"),
            "ignore",
            r"on_bad_image = 'ignore'.*'skip' or 'error'",
        ),
        (("grid", "seeds"), [0, 0], r"grid\.seeds = \[0, 0\]: .*unique"),
        (("surprise",), 1, r"surprise = 1: not a setting; allowed here: compute, datasets, evaluate, grid, "),
    ],
)
def test_field_errors(raw_params: dict, path: tuple, value: object, expected: str) -> None:
    node = raw_params
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    assert __import__("re").search(expected, errors_for(raw_params))


def test_milestone_past_last_epoch(raw_params: dict) -> None:
    raw_params["train"].update(schedule="step", epochs=4, milestones=[2, 4])
    msg = errors_for(raw_params)
    assert "train.milestones = [2, 4]" in msg and "[4] at or past the last epoch (epochs=4)" in msg
    assert "allowed: epochs 1..3" in msg


def test_dataset_keys_the_dvc_stages_read_must_be_written(raw_params: dict) -> None:
    del raw_params["datasets"]["embedded"]["train"]
    assert "datasets.embedded.train: missing; the DVC stages read it (write `train: {}`" in errors_for(raw_params)


def test_unknown_method_and_dataset(raw_params: dict) -> None:
    raw_params["grid"]["methods"].append("vit")
    raw_params["grid"]["datasets"].append("svhn")
    msg = errors_for(raw_params)
    assert "grid.methods: unknown method 'vit'" in msg and "'attn_resnet'" in msg
    assert "grid.datasets: 'svhn' has no entry under 'datasets'; defined: ['cifar10', 'cifar100', 'embedded'," in msg


def test_model_arguments_are_checked_against_the_factory(raw_params: dict) -> None:
    raw_params["methods"]["resnet"]["args"]["dpth"] = 20
    assert "methods.resnet.args: unknown argument(s) ['dpth'] for 'resnet'; allowed:" in errors_for(raw_params)
    raw_params["methods"]["resnet"]["args"] = {"depth": 21}
    assert "methods.resnet.args = {'depth': 21}: ResNet depth=21 must be 6n+2" in errors_for(raw_params)
    raw_params["methods"]["resnet"]["args"] = {"depth": 8}
    raw_params["methods"]["attn_resnet"]["args"]["scaling"] = "sqrt"
    assert "scaling='sqrt'; allowed: ['none', 'hw', 'residual', 'gated']" in errors_for(raw_params)


def test_method_override_is_validated_like_the_recipe(raw_params: dict) -> None:
    raw_params["methods"]["resnet"]["train"] = {"lr": 0}
    assert "methods.resnet.train.lr = 0: Input should be greater than 0" in errors_for(raw_params)
    raw_params["methods"]["resnet"]["train"] = {"learning_rate": 0.1}
    assert "methods.resnet.train: unknown field(s) ['learning_rate']" in errors_for(raw_params)


def test_search_space_keys(raw_params: dict) -> None:
    raw_params["tune"]["methods"] = "all"
    raw_params["tune"]["space"]["args.heads"] = {"type": "choice", "values": [1, 2]}
    assert "space keys ['args.heads'] must start with 'train.'" in errors_for(raw_params)
    del raw_params["tune"]["space"]["args.heads"]
    raw_params["tune"]["space"]["train.learning_rate"] = {"type": "choice", "values": [1, 2]}
    assert "tune.space.train.learning_rate: not a recipe field" in errors_for(raw_params)
    del raw_params["tune"]["space"]["train.learning_rate"]
    raw_params["tune"]["arch_space"]["attn_resnet"]["args.heads"] = {"type": "choice", "values": [1, 2]}
    assert "tune.arch_space.attn_resnet.args.heads: not an argument of model 'attn_resnet'" in errors_for(raw_params)
    raw_params["tune"]["arch_space"] = {"se_resnet": {"placement": {"type": "choice", "values": ["a"]}}}
    assert "arch_space keys ['se_resnet.placement'] must start with 'args.'" in errors_for(raw_params)


def test_an_unequal_search_is_refused_unless_opted_in(raw_params: dict) -> None:
    """Searching some compared methods and not others compares a search with no search: refused, with why."""
    raw_params["tune"]["methods"] = ["attn_resnet"]
    msg = errors_for(raw_params)
    assert "tune.methods = ['attn_resnet'] searches 1 of the 6 compared methods and leaves out ['resnet'," in msg
    assert "would measure the search as much as the method" in msg and "tune.allow_unequal: true" in msg
    raw_params["tune"]["allow_unequal"] = True
    assert validate_all(raw_params).searched == ["attn_resnet"]
    raw_params["tune"] |= {"methods": "all", "allow_unequal": False}
    assert validate_all(raw_params).searched == raw_params["grid"]["methods"]  # every method, one budget
    raw_params["tune"]["num_samples"] = 1
    assert "tune.num_samples = 1: must be >= 2 when searching" in errors_for(raw_params)


def test_the_paper_profiles_pass_and_compare_like_with_like(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    apply_profile(ROOT / "configs" / "paper.yaml", params)
    p = load_params(params)
    assert p.searched == [] and p.train.epochs == 200  # every method at the paper's one recipe
    apply_profile(ROOT / "configs" / "paper-search.yaml", params)
    p = load_params(params)
    assert p.searched == p.grid.methods and p.tune.num_samples == 16  # every method, the same budget
    apply_profile(ROOT / "configs" / "he2016.yaml", params)
    p = validate_all(yaml.safe_load(params.read_text()))
    assert {p.method(m).args["shortcut"] for m in ("resnet", "attn_resnet", "no_attention")} == {"A"}
    assert p.train.warmup_epochs == 1


def test_batch_must_split_over_workers(raw_params: dict) -> None:
    raw_params["compute"]["num_workers"] = 3
    assert f"train.batch_size = {raw_params['train']['batch_size']}: must be divisible by compute.num_workers = 3" in (
        errors_for(raw_params)
    )


def test_too_many_workers_for_the_machine() -> None:
    with pytest.raises(
        ConfigError,
        match=r"num_workers = 8 x compute.cpus_per_worker = 1 needs 8 CPUs, but this "
        r"machine has 2; allowed: num_workers 1..2",
    ):
        resolve_workers(ComputeCfg(num_workers=8), cpus=2, gpus=0, where="this machine")
    with pytest.raises(ConfigError, match="needs 4 GPUs, but the Ray cluster has 1"):
        resolve_workers(ComputeCfg(num_workers=4, use_gpu=True), cpus=64, gpus=1, where="the Ray cluster")
    auto = resolve_workers(ComputeCfg(), cpus=2, gpus=0, where="x")
    assert (auto.num_workers, auto.use_gpu) == (2, False)
    assert resolve_workers(ComputeCfg(), cpus=32, gpus=4, where="x").num_workers == 4


def test_stage_rejects_bad_params_before_any_work(tmp_path, raw_params: dict) -> None:
    """A stage run with invalid params exits 2 with one message and writes nothing."""
    raw_params["train"]["lr"] = -1
    raw_params["compute"]["num_workers"] = 64
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params))
    out = tmp_path / "results" / "train"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.train",
            "embedded",
            "data/processed/embedded",
            "tune.json",
            str(out),
            str(tmp_path / "m.json"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert r.returncode == 2, r.stderr
    assert "train.lr = -1: Input should be greater than 0" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_too_many_workers_stops_the_stage_before_ray(tmp_path, raw_params: dict) -> None:
    raw_params["compute"]["num_workers"] = 64
    raw_params["train"]["batch_size"] = 128  # divisible by 64 workers: only their number is wrong
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params))
    r = subprocess.run(
        [sys.executable, "-m", "stages.train", "embedded", "none", "none", "out", "m.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert r.returncode == 2, r.stderr
    assert "compute.num_workers = 64" in r.stderr and "allowed: num_workers 1.." in r.stderr
    assert not (tmp_path / ".ray_results").exists()


def test_an_unsplittable_batch_names_the_layer_that_set_it(raw_params: dict) -> None:
    """The message names the setting the batch size came from: the method's, else the data set's."""
    raw_params["compute"]["num_workers"] = 3
    raw_params["train"]["batch_size"] = 96  # splits over 3: only the layers below do not
    raw_params["datasets"]["embedded"]["train"] = {"batch_size": 64}
    raw_params["methods"]["resnet"]["train"] = {"batch_size": 100}
    errs = errors_for(raw_params)
    assert "methods.resnet.train.batch_size = 100: must be divisible by compute.num_workers = 3" in errs
    assert "datasets.embedded.train.batch_size (method attn_resnet) = 64: must be divisible" in errs
    assert "train.batch_size = 96" not in errs


def test_every_problem_in_one_message_with_the_key_meant(raw_params: dict) -> None:
    """A schema error (a bad value, a mistyped key) does not hide the cross-section rules: a mistyped method
    in the grid is said in the same message, and each mistyped name gets the known one it is closest to."""
    raw_params["train"]["lr"] = -1  # a required setting with a bad value
    raw_params["train"]["epohcs"] = 3
    raw_params["mlflow"]["experiment_prefx"] = "x"
    raw_params["grid"]["methods"].append("se_resnett")
    raw_params["methods"]["resnet"]["train"] = {"weight_decy": 0.1}
    lines = errors_for(raw_params).splitlines()[1:]
    assert lines[0] == "  - train.lr = -1: Input should be greater than 0"
    assert "train.epohcs = 3: not a setting (did you mean `train.epochs`?); allowed here: batch_size," in lines[1]
    assert "mlflow.experiment_prefx = 'x': not a setting (did you mean `mlflow.experiment_prefix`?)" in lines[2]
    rest = "\n".join(lines[3:])
    assert "grid.methods: unknown method 'se_resnett' (did you mean `se_resnet`?); defined under" in rest
    assert (
        "methods.resnet.train: unknown field(s) ['weight_decy'] (did you mean `methods.resnet.train.weight_decay`?)"
        in rest
    )
    assert "train.lr" not in rest  # what a rule says about the stand-in for the bad value is not said
    assert len(lines) == 5, lines


def test_a_name_far_from_every_known_one_gets_no_guess(raw_params: dict) -> None:
    raw_params["grid"]["methods"].append("vit")
    raw_params["zzz"] = 1
    msg = errors_for(raw_params)
    assert "did you mean" not in msg and "zzz = 1: not a setting; allowed here:" in msg


def test_a_data_set_cannot_take_the_report_experiments_name(raw_params: dict) -> None:
    raw_params["datasets"]["report"] = raw_params["datasets"]["embedded"]
    assert "datasets.report: the name is the report runs' experiment's (<prefix>-report)" in errors_for(raw_params)
