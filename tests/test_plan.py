"""The plan before the spend (pipeline.plan): units and epochs of a settings object, a measured probe, and the
device-hours and wall time they add up to; ``python -m pipeline.profiles ... --plan`` prints it and writes
nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import devices, profiles
from pipeline.compute import Workers
from pipeline.config import FastPathCfg, Params, TrainCfg
from pipeline.devices import DEVICES
from pipeline.plan import Net, Plan, Probe, Rate, Resources, data_size, format_plan, make_plan, unit_seconds
from pipeline.profiles import apply_profile
from pipeline.profiles import main as profiles_main
from pipeline.settings import load_params
from pipeline.spec import data_ref
from pipeline.train import probe as train_probe
from pipeline.train.probe import seconds_per_call
from pipeline.units import Work, distinct
from tests.project import ROOT

CPUS = {"CPU": 2, "GPU": 0}  # what the plan sees: this 2-core machine, whatever runs the tests
GPUS = {"CPU": 64, "GPU": 8}


def fixed(train: float, eval_: float) -> object:
    """A prober that measures nothing: every net at ``train`` / ``eval_`` images/s."""

    def prober(nets: Sequence[Net], w: Workers, fast: FastPathCfg) -> Probe:
        return Probe("fake", {n: Rate(train, eval_, n.batch, n.eval_batch, False) for n in nets}, 0.0)

    return prober


def profile(tmp_path: Path, *names: str) -> Params:
    """The shipped params.yaml with ``configs/<name>.yaml`` applied, on a temporary copy."""
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    for name in names:
        apply_profile(ROOT / "configs" / f"{name}.yaml", params)
    return load_params(params)


def plan_of(p: Params, tmp_path: Path, resources=CPUS, **kwargs) -> Plan:
    """No manifests (``tmp_path`` has none): data sizes from each data set's kind, as before a first run."""
    dirs = {d: tmp_path / "none" / d for d in p.grid.datasets}
    return make_plan(p, data_dirs=dirs, resources=resources, **{"prober": fixed(100.0, 400.0), **kwargs})


def test_the_default_plan_counts_every_method_and_seed_at_the_recipes_epochs(tmp_path) -> None:
    p = load_params(ROOT / "params.yaml")
    plan = plan_of(p, tmp_path)
    (train,) = [b for b in plan.blocks if b.stage == "train"]
    seeds = len(p.grid.seeds)
    assert train.rows == len(p.grid.methods) * seeds
    # the ablation (placement none) is the ResNet, weight for weight: its rows share ResNet's units
    assert len(train.units) == train.rows - seeds and train.shared_rows == 2 * seeds
    assert {r.name for r in train.units} == set(p.grid.methods) - {"no_attention"}
    assert [r.unit.train.epochs for r in train.units] == [p.recipe(r.name, "embedded").epochs for r in train.units]
    assert train.unit_epochs == sum(p.recipe(r.name, "embedded").epochs for r in train.units)
    d = p.dataset("embedded").fetch
    assert (plan.data[0].num_train, plan.data[0].num_test, plan.data[0].image_size) == (d.num_train, d.num_test, 32)
    lines = format_plan(plan)
    n, m = len(train.units), len(p.grid.methods)
    assert lines[0].startswith(f"plan: embedded: {n} units ({m} methods x {seeds} seeds; {2 * seeds} rows share")
    assert lines[-1].startswith(f"plan: total {n} units, {train.unit_epochs} unit-epochs, about ")
    assert "wall on 2 CPU workers of 1 core" in lines[-1]


def test_the_paper_profile_plans_two_data_sets_of_seven_methods_by_three_seeds(tmp_path) -> None:
    p = profile(tmp_path, "paper")
    plan = plan_of(p, tmp_path)
    # rows counted as the train stage keys units: the ablation (placement none) is the ResNet, trained once
    assert [(b.dataset, b.stage, b.rows, len(b.units), b.shared_rows) for b in plan.blocks] == [
        ("cifar10", "train", 21, 18, 6),
        ("cifar100", "train", 21, 18, 6),
    ]
    assert {r.unit.train.epochs for b in plan.blocks for r in b.units} == {200}
    assert [(d.num_train, d.num_test, d.num_classes) for d in plan.data] == [
        (50_000, 10_000, 10),
        (50_000, 10_000, 100),
    ]
    assert {n.batch for b in plan.blocks for n in b.nets} == {128}  # one worker per unit
    assert (
        "cifar10: 18 units (7 methods x 3 seeds; 6 rows share a unit), 200 epochs each = 3,600" in format_plan(plan)[0]
    )


def test_the_plan_counts_the_units_the_train_stage_trains(processed, tmp_path) -> None:
    """Both ask ``pipeline.units``: before any data exists the plan groups the rows into the units the train
    stage trains once the data is there, and given the stage's own work it plans exactly those units."""
    p = load_params(ROOT / "params.yaml")
    staged = Work(p, data_ref("embedded", processed), {})
    trained = {(r.name, r.seed) for r in distinct(staged.recipe)}
    (before,) = plan_of(p, tmp_path).blocks
    assert {(r.name, r.seed) for r in before.units} == trained and len(trained) < len(staged.recipe)
    (given,) = make_plan(p, prober=fixed(100.0, 400.0), works=[staged], data_dirs={"embedded": processed}).blocks
    assert [r.key for r in given.units] == [r.key for r in distinct(staged.recipe)]


def test_device_hours_are_units_by_epochs_by_images_over_the_measured_rate(tmp_path) -> None:
    p = profile(tmp_path, "paper")  # bn_recalibration 0: train images / train rate + test images / eval rate
    slow, fast = plan_of(p, tmp_path, prober=fixed(100.0, 400.0)), plan_of(p, tmp_path, prober=fixed(200.0, 800.0))
    per_unit = 200 * (50_000 / 100.0 + 10_000 / 400.0)
    assert slow.device_s == pytest.approx(2 * 18 * per_unit)  # 18 distinct units per data set
    assert fast.device_s == pytest.approx(slow.device_s / 2)  # twice the measured rate, half the time
    assert slow.wall_s == pytest.approx(slow.device_s / 2)  # 2 CPU workers side by side, one unit each
    on_gpus = plan_of(p, tmp_path, resources=GPUS)
    assert on_gpus.device_s == pytest.approx(slow.device_s) and on_gpus.wall_s == pytest.approx(slow.device_s / 8)
    assert re.search(
        r"about 1,050 device-hours; about 5\.5 days wall on 8 GPUs \(measured probe", format_plan(on_gpus)[-1]
    )
    # the default's BatchNorm recalibration: bn batches of the whole batch, on every worker, at the eval rate
    d = load_params(ROOT / "params.yaml")
    default = plan_of(d, tmp_path)
    block, size = default.blocks[0], default.data[0]
    u, r = block.units[0].unit, Rate(100.0, 400.0, 64, 500, False)
    t, w = u.train, block.workers
    expect = t.epochs * (size.num_train / 100.0 + size.num_test / 400.0 + w * t.bn_recalibration * t.batch_size / 400.0)
    assert unit_seconds(u, w, size, r) == pytest.approx(expect)


def test_the_search_and_the_study_are_planned_when_on(tmp_path) -> None:
    p = profile(tmp_path, "paper", "paper-search", "study-cifar10")
    plan = plan_of(p, tmp_path)
    got = [(b.dataset, b.stage, b.rows, len(b.units), b.upper_bound) for b in plan.blocks]
    assert got == [
        ("cifar10", "train", 21, 18, False),  # the ablation's rows share ResNet's units
        ("cifar10", "search", 6 * 16, 6 * 16, True),  # trials: 16 per search (the ablation's is ResNet's)
        ("cifar10", "searched", 21, 18, True),  # up to every unit again at what the search adopted
        ("cifar10", "study", 21 * 3, 21 * 3, False),  # 21 cells x 3 seeds: at depth 110 no two cells alike
        ("cifar100", "train", 21, 18, False),
        ("cifar100", "search", 6 * 16, 6 * 16, True),
        ("cifar100", "searched", 21, 18, True),
    ]
    trial = plan.blocks[1].units[0].unit
    assert (trial.train.epochs, *trial.images(50_000, 10_000), plan.blocks[1].workers) == (10, 40_000, 10_000, 1)
    assert {r.unit.train.epochs for r in plan.blocks[3].units} == {200}
    lines = format_plan(plan)
    assert "cifar10: search: up to 96 trials (6 searches of 7 methods x 16 trials) of up to 10 epochs each" in lines[1]
    assert "cifar10: study: 63 units (21 cells x 3 seeds), 200 epochs each = 12,600 unit-epochs" in lines[3]
    assert "(+ up to 192 search trials)" in lines[-1] and "up to about" in lines[-1]


def test_a_stage_plans_its_own_work_only(tmp_path) -> None:
    p = profile(tmp_path, "paper", "study-cifar10")
    plan = plan_of(p, tmp_path, stages={"train"})
    assert [(b.dataset, b.stage) for b in plan.blocks] == [("cifar10", "train"), ("cifar100", "train")]


def test_the_probe_times_a_few_steps_within_its_budget_or_one_slow_step() -> None:
    calls: list[int] = []

    def step(seconds: float):
        return lambda: calls.append(1) or time.sleep(seconds)

    assert seconds_per_call(step(0.0), lambda: None, budget_s=0.5, most=5) < 0.01
    assert len(calls) == 2 + 5  # two warm-ups where cheap, then `most` timed steps
    calls.clear()
    assert seconds_per_call(step(0.05), lambda: None, budget_s=0.02, most=5) >= 0.05
    assert len(calls) == 1 + 1  # one warm-up, one timed step: a step is slower than the whole budget


def test_data_sizes_come_from_the_manifest_else_from_the_kind(processed, tmp_path) -> None:
    p = load_params(ROOT / "params.yaml")
    got = data_size("embedded", p.dataset("embedded"), processed)
    assert (got.num_train, got.num_test, got.image_size, got.source) == (60, 20, 32, "manifest")
    cifar = profile(tmp_path, "paper").dataset("cifar100")
    sub = type(cifar).model_validate({**cifar.model_dump(), "preprocess": {"classes": 10, "subset": {"train": 100}}})
    got = data_size("cifar100", sub, tmp_path / "none")
    assert (got.num_train, got.num_test, got.num_classes) == (1_000, 1_000, 10) and "approximate" in got.source


def test_the_plan_cli_probes_the_default_nets_for_real(tmp_path, monkeypatch, capsys) -> None:
    """``python -m pipeline.profiles --plan``: params.yaml as it is, the real probe (the default's small nets)."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert profiles_main(["--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("plan: embedded: ") and lines[-1].startswith("plan: total ")
    probe = re.search(r"plan: probe on cpu, 1 thread per worker.* \(([\d.]+) s\); train/eval img/s", lines[-2])
    assert probe and float(probe.group(1)) < 60  # about 3-9 s on 2 busy cores
    assert all(float(r.replace(",", "")) > 0 for r in re.findall(r" ([\d,.]+)/[\d,.]+", lines[-2]))


def test_a_bad_profile_is_refused_and_nothing_is_written(tmp_path, capsys) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian.epochs: 10\n")
    assert profiles_main([str(bad), str(params), "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {params} with {bad}: invalid settings") and "trian" in err
    assert str(tmp_path / "params.yaml") in err and "tmp" not in err.replace(str(tmp_path), "")
    assert params.read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_plan_of_the_paper_profile_writes_nothing(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "pipeline.profiles", "configs/paper.yaml", str(params), "--plan"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("plan: cifar10: 18 units (7 methods x 3 seeds; 6 rows share a unit), 200 epochs each")
    assert lines[1].startswith("plan: cifar100: 18 units") and "resnet " in lines[2]
    assert re.match(r"plan: total 36 units, 7,200 unit-epochs, about [\d,.]+ device-hours; about .+ wall on ", lines[3])
    assert params.read_bytes() == (ROOT / "params.yaml").read_bytes()


# --- a plan priced for a GPU that is not here (--device) ---------------------------------------------------

H100 = DEVICES["h100"]
RECIPE = TrainCfg(epochs=1, batch_size=128, lr=0.1)


def no_probe(*args, **kwargs):
    raise AssertionError("probed on this machine")


def test_the_paper_plan_priced_for_an_h100_probes_nothing_here(tmp_path, monkeypatch, capsys) -> None:
    """``--plan --device h100`` on a CPU machine: H100-hours from the nets' FLOPs, labelled an estimate, and
    neither the probe nor the Ray cluster is touched."""
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    monkeypatch.setattr(profiles, "probe", no_probe)
    monkeypatch.setattr(train_probe, "measure", no_probe)
    monkeypatch.setattr(profiles, "seen_resources", no_probe)
    monkeypatch.setattr(devices, "RESULTS", tmp_path / "none")  # no measured results: the estimate route
    argv = ["configs/paper.yaml", str(params), "--plan", "--device", "h100"]
    assert profiles_main([*argv, "--utilisation=0.35"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("device-hours" not in x and "measured" not in x for x in lines)
    # ResNet-110 (width 16): 0.506 GFLOPs forward, 3x that a training step, at 35 % of 989 TFLOP/s
    train, eval_ = 0.35 * 989e12 / (3 * 506_299_648), 0.35 * 989e12 / 506_299_648
    assert f"resnet {train:,.0f}/{eval_:,.0f}, densenet_bc " in lines[2]
    assert lines[2].startswith("plan: rates for H100 SXM, not probed here (estimate: 3x forward FLOPs at 35 % of ")
    assert re.search(r"cifar10: 18 units .*; about [\d.]+ H100-hours \(estimate\)$", lines[0])
    assert re.match(r"plan: total 36 units, 7,200 unit-epochs, about [\d.]+ H100-hours \(estimate\); about ", lines[3])
    assert "wall on 1 H100 GPU (estimate: FLOPs at 35 % of H100 SXM's bf16 peak, +/- " in lines[3]
    assert params.read_bytes() == (ROOT / "params.yaml").read_bytes()
    # eight of them: the same hours, an eighth of the wall time (one unit per GPU)
    assert profiles_main([*argv, "--utilisation=0.35", "--gpus", "8"]) == 0
    eight = capsys.readouterr().out.splitlines()
    assert eight[0] == lines[0] and "wall on 8 H100 GPUs" in eight[3]


ALLOWED = "h100, h200, a100, v100, l4, a10"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "h1000"], f"--device 'h1000': not a device the plan knows; allowed: {ALLOWED}"),
        (["--device", "h100", "--utilisation", "35"], "--utilisation 35: a fraction of the peak; allowed: (0, 1]"),
        (["--device=a100", "--gpus", "0"], "--gpus 0: how many A100 GPUs to plan for; allowed: 1 or more"),
        (["--gpus", "2"], f"--gpus: prices a plan; allowed only with --plan --device ({ALLOWED})"),
    ],
)
def test_a_bad_pricing_option_is_one_message_before_anything_runs(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setattr(profiles, "probe", no_probe)
    monkeypatch.setattr(profiles, "planned", no_probe)  # not even the profile is applied
    assert profiles_main(["configs/paper.yaml", str(tmp_path / "params.yaml"), "--plan", *extra]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_the_flops_estimate_is_a_hand_count_over_the_peak() -> None:
    """ResNet-8 of width 8 on 32x32, in multiply-adds: stem 32*32*8*27; stage 1, two 8->8 convs at 32x32;
    stage 2, 8->16 at 16x16, 16->16 and a 1x1 8->16 projection; stage 3 the same at 8x8 and twice the width;
    the classifier 32*10. A multiply-add is 2 FLOPs."""
    macs = (
        32 * 32 * 8 * 27
        + 2 * 32 * 32 * 8 * 8 * 9
        + 16 * 16 * 16 * (8 * 9 + 16 * 9 + 8)
        + 8 * 8 * 32 * (16 * 9 + 32 * 9 + 16)
        + 32 * 10
    )
    net = Net("resnet", '{"depth": 8, "width": 8}', 32, 128, 500, RECIPE)
    assert devices.forward_flops(net) == 2 * macs == 6_472_320
    rate = devices.estimated_rate(net, 2 * macs, 989.0, 0.35)
    assert rate.train == pytest.approx(0.35 * 989e12 / (3 * 6_472_320)) and rate.eval == pytest.approx(3 * rate.train)
    assert devices.peak(H100, devices.switches(FastPathCfg(), H100)) == ("bf16", 989.0)
    assert devices.peak(H100, devices.switches(FastPathCfg(bf16=False), H100)) == ("tf32", 494.0)  # cuDNN's default
    assert devices.peak(DEVICES["v100"], devices.switches(FastPathCfg(), DEVICES["v100"])) == ("fp32", 15.7)


def test_rates_measured_by_the_fast_path_benchmark_replace_the_estimate(tmp_path) -> None:
    """A results file as benchmarks/fast_path.py writes it (its own stdout, from a real --smoke run, the
    CPU's name replaced by an H100's): the net it measured, at the variant training runs, gets the measured
    images/s and the date of the file's name; a net it did not measure keeps the estimate, and says so."""
    smoke = [sys.executable, str(ROOT / "benchmarks" / "fast_path.py"), "--smoke"]
    out = subprocess.run(smoke, capture_output=True, text=True, check=True).stdout
    results = tmp_path / "results"
    results.mkdir()
    for name, gpu in [("h100-2026-12-08", "NVIDIA H100 80GB HBM3"), ("a100-2026-12-09", "NVIDIA A100-SXM4-80GB")]:
        (results / f"fast_path-{name}.txt").write_text(re.sub(r"CPU \(\d+ threads?\)", gpu, out))
    measured = float(re.search(r"all but compile\s+([\d,]+) images/s", out).group(1).replace(",", ""))
    same = Net("resnet", '{"depth": 8, "width": 16}', 32, 128, 500, RECIPE)  # the smoke's net: depth 8
    other = Net("resnet", '{"depth": 8, "width": 8}', 32, 128, 500, RECIPE)
    workers = Workers(1, True, 1)
    got = devices.pricer(H100, utilisation=0.35, results=results)([same, other], workers, FastPathCfg(compile=False))
    assert (got.rates[same].train, got.rates[same].eval) == (measured, 3 * measured)
    assert got.rates[same].source == "measured 2026-12-08" and got.rates[same].scaled  # the smoke's batch 16
    assert got.rates[other] == devices.estimated_rate(other, 6_472_320, 989.0, 0.35)
    assert got.estimated and got.basis == "estimate: FLOPs at 35 % of H100 SXM's bf16 peak, the rest measured"
    assert got.notes[0] == "measured on NVIDIA H100 80GB HBM3 2026-12-08 by benchmarks/fast_path.py"
    # training compiles by default on a GPU: the smoke measured no compiled variant, so nothing is measured
    auto = devices.pricer(H100, results=results)([same], workers, FastPathCfg())
    assert auto.rates[same].source == "" and auto.basis.startswith("estimate: ") and len(auto.notes) == 1
    # every net measured: the hours claim no estimate, and name the measurement
    a100 = devices.pricer(DEVICES["a100"], results=results)([same], workers, FastPathCfg(compile=False))
    assert not a100.estimated and a100.rates[same].train == measured and a100.rates[same].source == ""
    assert a100.basis == "measured on NVIDIA A100-SXM4-80GB 2026-12-09 by benchmarks/fast_path.py"
    p = load_params(ROOT / "params.yaml")
    everywhere = lambda nets, w, fast: replace(a100, rates={n: a100.rates[same] for n in nets})  # noqa: E731
    lines = format_plan(plan_of(p, tmp_path, resources=Resources(1.0, 1.0, "--gpus 1"), prober=everywhere))
    assert "about" in lines[0] and lines[0].endswith(" A100-hours") and "estimate" not in " ".join(lines)
    assert lines[1].startswith("plan: rates for A100 SXM, not probed here (measured on NVIDIA A100-SXM4-80GB")
    assert f"resnet {measured:,.0f}/{3 * measured:,.0f} at batch 16/16" in lines[1]
    assert f"wall on 1 A100 GPU ({a100.basis}, +/-" in lines[2]
