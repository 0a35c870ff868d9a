"""Benchmarks cannot silently rot: every script in benchmarks/ runs in its smoke mode (tiny sizes) and must
finish and print its figures. A new script without an entry here fails the test until it gets one."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.project import ROOT, env

# fast_path.py's figures after a variant's label
SPEED = r"\s+[\d,]+ images/s\s+x\s*[\d.]+\s+[\d.]+ TFLOP/s\s+MFU (n/a|[\d.]+% of \d+)"
# script -> the figure lines its smoke run must print (a number with its unit, where the script prints one)
FIGURES = {
    "fast_path.py": [r"eager \(fp32, NCHW, data on host\)" + SPEED, r"\+ channels_last" + SPEED],
    "grid_concurrency.py": [r"concurrent:\s+[\d.]+ s wall for 2 units, 2 job\(s\) side by side"],
    "preprocess.py": [
        r"preprocess \(decode, stats, Parquet\):\s+[\d.]+ s\s+=\s+[\d,]+ images/s",
        r"= +[\d,]+ images/s on",
    ],
    "stream.py": [
        r"stream\s+[\d,]+ images/s =\s+[\d,]+ per core\s+peak object store\s+[\d.]+ MiB\s+spilled\s+[\d.]+ MiB",
        r"DataLoader\s+[\d,]+ images/s =\s+[\d,]+ per core",
        r"ratio stream / DataLoader: \d+\.\d{3}",
        r"memory: stream peak object store at [\d,]+ / at [\d,]+ = [\d.]+x",
        r"stream, interleaved shards\s+[\d.]+ bits",
        r"torchvision\.io\.decode_jpeg \+ resized_crop \(the pipeline's\)\s+[\d,]+ images/s per core",
        r"Pillow, full resolution\s+[\d,]+ images/s per core",
    ],
    "throughput.py": [
        r"bare loop, 1 process x 1 threads\s+\d+ img/s",
        r"pipeline, 1 worker x 1 threads\s+\d+ img/s\s+ratio \d+\.\d{3}",
        r"pipeline's own cost between epochs .*: \d+ ms median per epoch",
        r"attention, final \(default\)\s+[\d,]+\s+[\d.]+\s+\d+",
    ],
}


def test_every_benchmark_has_a_smoke_check() -> None:
    assert sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")) == sorted(FIGURES)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(FIGURES))
def test_benchmark_smoke_run(script: str, tmp_path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(r.stdout)
    for pattern in FIGURES[script]:
        assert re.search(pattern, r.stdout), f"{script}: no line matching {pattern!r} in:\n{r.stdout}"
