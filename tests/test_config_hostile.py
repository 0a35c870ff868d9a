"""Hostile settings: YAML syntax errors, duplicate keys, non-finite numbers, booleans for numbers, search values
outside what the recipe or the net accepts, an empty or unwritable storage path, names that would become paths.
Each is one ``ConfigError`` naming the key (a stage: exit 2, one ``error:`` line, no traceback)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import check_storage
from pipeline.config import ConfigError
from pipeline.models.checks import validate_all
from pipeline.settings import load_params, read_yaml
from tests.project import ROOT

SHIPPED = (ROOT / "params.yaml").read_text()
EPOCHS = f"epochs: {yaml.safe_load(SHIPPED)['train']['epochs']}"  # the recipe's line, whatever its value
LR = re.search(r"^  lr: .*$", SHIPPED, re.M)[0]  # the recipe's lr line, its comment included


def errors_for(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        validate_all(raw)
    return str(e.value)


def load_error(tmp_path: Path, text: str) -> str:
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_params(tmp_path / "params.yaml")
    return str(e.value)


def line_of(text: str, needle: str, nth: int = 0) -> int:
    """1-based line number of the nth line that starts with ``needle`` (after indentation)."""
    return [i for i, ln in enumerate(text.splitlines(), 1) if ln.lstrip().startswith(needle)][nth]


def run_check_stage(tmp_path: Path, params_text: str) -> subprocess.CompletedProcess:
    """``python -m stages.check`` (the first stage of `dvc repro`) in ``tmp_path`` with this params.yaml."""
    (tmp_path / "params.yaml").write_text(params_text)
    return subprocess.run(
        [sys.executable, "-m", "stages.check", "results/settings-checked.txt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        timeout=120,
    )


def assert_one_clean_error(r: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("error:") == 1 and r.stderr.startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "results" / "settings-checked.txt").exists()


# 1. YAML syntax -------------------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    text = SHIPPED.replace(f"\n  {EPOCHS}\n", f"\n  {EPOCHS}: 4\n", 1)
    msg = load_error(tmp_path, text)
    n = line_of(text, f"{EPOCHS}: 4")  # its second ':' follows the value
    column = len(f"  {EPOCHS}:")
    assert msg == f"{tmp_path / 'params.yaml'}: line {n}, column {column}: mapping values are not allowed here"


def test_tab_indentation_is_a_syntax_error_with_its_line(tmp_path: Path) -> None:
    text = SHIPPED.replace(f"\n  {EPOCHS}\n", f"\n\t{EPOCHS}\n", 1)
    msg = load_error(tmp_path, text)
    assert f"params.yaml: line {line_of(text, EPOCHS)}, column 1: found character '\\t'" in msg
    assert "never tabs" in msg


def test_stage_with_a_yaml_syntax_error_exits_2_with_one_message(tmp_path: Path) -> None:
    text = SHIPPED.replace(f"{LR}\n", "  lr: [0.1\n", 1)
    r = run_check_stage(tmp_path, text)
    assert_one_clean_error(r, tmp_path)
    assert re.search(r"error: params\.yaml: line \d+, column \d+: ", r.stderr), r.stderr


# 2. Duplicate keys ----------------------------------------------------------------------------------------------


def test_duplicate_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    text = SHIPPED.replace(f"{LR}\n", f"{LR}\n  lr: 0.5\n", 1)
    first, second = line_of(text, LR.strip()), line_of(text, "lr: 0.5")
    msg = load_error(tmp_path, text)
    assert re.search(rf"train\.lr: duplicate key, written at line {first}, column \d+ and again at line {second},", msg)


def test_a_merge_key_override_is_not_a_duplicate(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: &b {x: 1, y: 2}\nmore: {<<: *b, x: 3}\nmulti: {<<: [*b, {z: 0}], y: 4}\n")
    assert read_yaml(tmp_path / "a.yaml") == {
        "base": {"x": 1, "y": 2},
        "more": {"x": 3, "y": 2},
        "multi": {"x": 1, "y": 4, "z": 0},
    }
    (tmp_path / "b.yaml").write_text("more: {<<: {x: 1}, x: 3, x: 4}\n")
    with pytest.raises(ConfigError, match=r"more\.x: duplicate key, written at line 1, column 20 and again at line 1"):
        read_yaml(tmp_path / "b.yaml")


# 3. Non-finite numbers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("timeout_s: 60 ", "timeout_s: .inf ", "datasets.cifar10.fetch.timeout_s = inf"),
        (f"{LR}\n", "  lr: .inf\n", "train.lr = inf"),
        ("  weight_decay: 5.0e-4\n", "  weight_decay: .nan\n", "train.weight_decay = nan"),
        ("args: {depth: 10, growth_rate: 8}", "args: {depth: 10, growth_rate: -.inf}", "densenet_bc.args.growth_rate"),
        ("    train: {}              # overrides", "    train: {lr: .nan}  #", "datasets.embedded.train.lr = nan"),
    ],
)
def test_non_finite_numbers_are_refused_anywhere(tmp_path: Path, old: str, new: str, key: str) -> None:
    assert old in SHIPPED
    msg = load_error(tmp_path, SHIPPED.replace(old, new, 1))
    assert key in msg and "not a finite number" in msg, msg
    assert msg.count("\n  - ") == msg.count("not a finite number")  # said once per key, nothing else


# 4. Booleans for numbers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "key"),
    [
        (("train", "epochs"), "train.epochs = True: a boolean (true) where a number is expected"),
        (("train", "lr"), "train.lr = True: a boolean"),
        (("datasets", "embedded", "preprocess", "subset", "train"), "embedded.preprocess.subset.train = True: a bool"),
        (("datasets", "embedded", "fetch", "num_train"), "datasets.embedded.fetch.num_train = True: a boolean"),
        (("tune", "space", "train.lr", "low"), "tune.space.train.lr.low = True: a boolean"),
        (("compute", "num_workers"), "compute.num_workers = True: a boolean"),
        (("methods", "resnet", "args", "depth"), "methods.resnet.args.depth = true: a boolean where 'resnet' takes"),
        (("methods", "densenet_bc", "args", "compression"), "densenet_bc.args.compression = true: a boolean"),
    ],
)
def test_booleans_are_refused_where_numbers_are_expected(path: tuple, key: str) -> None:
    raw = yaml.safe_load(SHIPPED)
    raw["datasets"]["embedded"]["preprocess"] = {"subset": {"train": None, "test": None}}  # unshare the anchor
    node = raw
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = True
    assert key in errors_for(raw)


def test_method_recipe_override_refuses_a_boolean() -> None:
    raw = yaml.safe_load(SHIPPED)
    raw["methods"]["resnet"]["train"] = {"epochs": True}
    assert "methods.resnet.train.epochs = True: a boolean (true) where a number is expected" in errors_for(raw)


# 5. Search values -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "dim", "expected"),
    [
        (
            {"train.momentum": {"type": "choice", "values": [0.9, 1.5]}},
            "space",
            "tune.space.train.momentum: choice value 1.5 is refused by the recipe (method resnet, data set embedded): "
            "Input should be less than 1",
        ),
        (
            {"train.schedule": {"type": "choice", "values": ["step", "linear"]}},
            "space",
            "tune.space.train.schedule: choice value 'linear' is refused by the recipe (method resnet, data set "
            "embedded): Input should be 'step' or 'cosine'",
        ),
        (
            {"train.momentum": {"type": "uniform", "low": 0.5, "high": 1.5}},
            "space",
            "tune.space.train.momentum: high 1.5 is refused by the recipe",
        ),
        (
            {"train.batch_size": {"type": "uniform", "low": 32, "high": 128}},
            "space",
            "tune.space.train.batch_size: uniform samples real numbers, but batch_size takes int; allowed: "
            "{type: choice",
        ),
        (
            {"args.placement": {"type": "choice", "values": ["stage", "middle"]}},
            "arch",
            "tune.arch_space.attn_resnet.args.placement: choice value 'middle' does not build 'attn_resnet': "
            "placement='middle'; allowed: ['block', 'stage', 'stage_branch', 'final', 'none']",
        ),
        (
            {"args.depth": {"type": "choice", "values": [8, 9]}},
            "arch",
            "tune.arch_space.attn_resnet.args.depth: choice value 9 does not build 'attn_resnet': ResNet depth=9",
        ),
        (
            {"args.depth": {"type": "uniform", "low": 8, "high": 20}},
            "arch",
            "tune.arch_space.attn_resnet.args.depth: uniform samples real numbers, but depth of 'attn_resnet' "
            "takes int",
        ),
    ],
)
def test_search_values_outside_what_is_accepted_are_refused(section: dict, dim: str, expected: str) -> None:
    raw = yaml.safe_load(SHIPPED)
    if dim == "space":
        raw["tune"]["space"].update(section)
    else:
        raw["tune"]["arch_space"]["attn_resnet"].update(section)
    assert expected in errors_for(raw)


def test_shipped_search_space_passes_when_searched() -> None:
    raw = yaml.safe_load(SHIPPED)
    raw["tune"]["methods"] = "all"
    assert validate_all(raw).searched == raw["grid"]["methods"]


# 6. Storage path ------------------------------------------------------------------------------------------------


def with_storage(value: str):
    p = load_params(ROOT / "params.yaml")
    return p.model_copy(update={"compute": p.compute.model_copy(update={"storage_path": value})})


def test_empty_storage_path_is_refused() -> None:
    raw = yaml.safe_load(SHIPPED)
    raw["compute"]["storage_path"] = ""
    assert "compute.storage_path = '': String should have at least 1 character" in errors_for(raw)


def test_storage_path_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    errs = check_storage(with_storage(str(tmp_path / "f" / "runs")))
    assert (
        len(errs) == 1
        and f"compute.storage_path = '{tmp_path}/f/runs': cannot write there: not a directory" in (errs[0])
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_unwritable_storage_path_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    errs = check_storage(with_storage(str(ro / "runs")))
    assert len(errs) == 1 and "compute.storage_path" in errs[0] and "permission denied" in errs[0]


def test_storage_check_leaves_nothing_behind_and_skips_uris(tmp_path: Path) -> None:
    assert check_storage(with_storage(str(tmp_path / "a" / "b"))) == []
    assert list(tmp_path.iterdir()) == []  # created, probed, removed again
    (tmp_path / "kept").mkdir()
    assert check_storage(with_storage(str(tmp_path / "kept"))) == []
    assert list(tmp_path.iterdir()) == [tmp_path / "kept"] and list((tmp_path / "kept").iterdir()) == []
    assert check_storage(with_storage("s3://bucket/nowhere")) == []  # no network before work starts


def test_check_stage_refuses_an_unwritable_storage_path(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a directory")
    r = run_check_stage(tmp_path, SHIPPED.replace("storage_path: .ray_results", "storage_path: taken/runs", 1))
    assert_one_clean_error(r, tmp_path)
    assert "compute.storage_path = 'taken/runs': cannot write there: not a directory" in r.stderr


# 7. Names -------------------------------------------------------------------------------------------------------

NAME_RULE = "is not a valid name; allowed: letters, digits, '_' and '-' ([A-Za-z0-9_-]+)"


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda r: r["datasets"].update({"../../x": r["datasets"]["embedded"]}), "datasets: key '../../x'"),
        (lambda r: r["methods"].update({"a/b": r["methods"]["resnet"]}), "methods: key 'a/b'"),
        (lambda r: r["grid"].update(datasets=["../x"]), "grid.datasets.0 = '../x': '../x'"),
        (lambda r: r["grid"].update(methods=["resnet", "x y"]), "grid.methods.1 = 'x y': 'x y'"),
        (lambda r: r["tune"].update(methods=["../x"]), "tune.methods.0 = '../x': '../x'"),
        (lambda r: r["tune"].update(arch_space={"a.b": {}}), "tune.arch_space: key 'a.b'"),
    ],
)
def test_names_that_would_become_paths_are_refused(edit, key: str) -> None:
    raw = yaml.safe_load(SHIPPED)
    edit(raw)
    msg = errors_for(raw)
    assert f"{key} {NAME_RULE}" in msg, msg
    assert msg.count("\n  - ") == 1, msg  # one line, not one per union branch


# 8. Sources and data sets outside the grid ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("ftp://mirror.example/cifar-10-binary.tar.gz", "the ftp:// scheme is not supported; allowed: official, "),
        ("s3://bucket", "is not a valid S3 URI; expected s3://bucket/key"),
        ("s3://Bad_Bucket/key.tgz", "is not a valid S3 URI"),
        ("s3:/bucket/key.tgz", "looks like a URL without '://'"),
        ("https:///no-host.tgz", "has no host"),
    ],
)
def test_a_source_the_fetcher_cannot_read_is_refused_at_check(tmp_path: Path, source: str, expected: str) -> None:
    raw = yaml.safe_load(SHIPPED)
    raw["grid"]["datasets"] = ["cifar10"]
    raw["datasets"]["cifar10"]["fetch"]["source"] = source
    r = run_check_stage(tmp_path, yaml.safe_dump(raw, sort_keys=False))
    assert_one_clean_error(r, tmp_path)
    assert f"datasets.cifar10.fetch.source = {source!r}" in r.stderr and expected in r.stderr, r.stderr


def test_a_data_set_outside_the_grid_is_validated_like_the_others() -> None:
    raw = yaml.safe_load(SHIPPED)
    assert "cifar10" not in raw["grid"]["datasets"]
    raw["datasets"]["cifar10"]["train"] = {"epoch": 3}  # a typo of epochs
    assert "datasets.cifar10.train: unknown field(s) ['epoch']" in errors_for(raw)
    raw["datasets"]["cifar10"]["train"] = {"lr": -1.0}
    assert "datasets.cifar10.train = {'lr': -1.0}" in errors_for(raw)


# 9. Edges a hostile user found (issue 32): through the check stage, as `dvc repro` runs it ------------------------
# One stage run per kind of problem (a stage run costs seconds): every item's own message in the one error.

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpM"
SEEDS_BLOCK = re.search(r"^  seeds:\n(?:  - .*\n)+", SHIPPED, re.M)[0]
SECRETS = ("ghp_a1B2", JWT[:20], "AKIAIOSFODNN7EXAMPLE")


def _edges(text: str, edits: list[tuple[str, str]]) -> str:
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def _refused(tmp_path: Path, text: str, expected: list[str]) -> None:
    r = run_check_stage(tmp_path, text)
    assert_one_clean_error(r, tmp_path)
    for e in expected:
        assert e in r.stderr, (e, r.stderr)
    for secret in SECRETS:  # a refused secret is not echoed either
        assert secret not in r.stderr
    assert not (tmp_path / "data").exists()  # nothing fetched


def test_values_that_would_overflow_run_for_ever_or_leak_are_refused(tmp_path: Path) -> None:
    """Seeds torch cannot take (``epoch_seed * 1000 + rank`` overflows 64 bits: passed, then crashed in a worker),
    epochs and lr no recipe uses, labels that are no table cell (empty, two lines) or a credential (never echoed,
    even past a label's length), a key in the run storage's URI (dvc.lock would keep it)."""
    text = _edges(
        SHIPPED,
        [
            (SEEDS_BLOCK, "  seeds:\n  - 18446744073709551616\n"),
            (f"  {EPOCHS}\n", "  epochs: 1000000000000\n"),
            (LR, "  lr: 1.0e+308"),
            ("label: ResNet\n", "label: ''\n"),
            ("label: DenseNet-BC\n", 'label: "Dense\\nNet"\n'),
            ("label: SE-ResNet\n", "label: ghp_" + "a1B2" * 9 + "\n"),
            ("label: CBAM-ResNet\n", f"label: {JWT}\n"),
            ("storage_path: .ray_results", "storage_path: s3://AKIAIOSFODNN7EXAMPLE:pw@b/p"),
        ],
    )
    _refused(
        tmp_path,
        text,
        [
            "grid.seeds.0 = 18446744073709551616: Input should be less than or equal to 4294967295",
            "train.epochs = 1000000000000: Input should be less than or equal to 10000",
            "train.lr = 1e+308: Input should be less than or equal to 10",
            "methods.resnet.label = '': '' is not a label; allowed: 1 to 80 printable characters on one line",
            "methods.densenet_bc.label = 'Dense\\nNet': 'Dense\\nNet' is not a label",
            "methods.se_resnet.label = '***': '***' holds something shaped as a credential",
            "methods.cbam_resnet.label = '***': '***' holds something shaped as a credential",
            "compute.storage_path = 's3://***@b/p': carries a credential; allowed: a URI without one",
        ],
    )


def test_nets_that_do_not_build_and_batches_larger_than_the_data_are_refused(tmp_path: Path) -> None:
    """A width the model divides by (was a ZeroDivisionError traceback out of the model check); a batch larger
    than the train split, or than a search's train split by a batch size the search space may set (trained one
    short batch an epoch, silently)."""
    text = _edges(
        SHIPPED,
        [
            ("args: {depth: 8, width: 8}\n    label: ResNet", "args: {depth: 8, width: 0}\n    label: ResNet"),
            ("  batch_size: 16 ", "  batch_size: 5000 "),
            ("  methods: []", "  methods: all"),
            ("    train.lr: {", "    train.batch_size: {type: choice, values: [16, 900]}\n    train.lr: {"),
        ],
    )
    _refused(
        tmp_path,
        text,
        [
            "methods.resnet.args = {'depth': 8, 'width': 0}: width=0 must be >= 1",
            "train.batch_size = 5000: larger than the 1,000 images of the train split of embedded (methods ",
            "tune.space.train.batch_size = 900: larger than the 800 images of the search's train split of embedded",
        ],
    )


def test_a_nul_byte_is_one_message(tmp_path: Path) -> None:
    """yaml's ReaderError was a traceback: it is raised while the loader is made, outside the old ``try``."""
    _refused(tmp_path, SHIPPED.replace("label: ResNet", "label: Res\x00Net"), ["not readable as YAML: character "])
