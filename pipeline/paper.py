"""The numbers the paper claims (top-1 accuracy, %), transcribed from ../shared/paper.txt.

The paper prints two versions of its results that disagree: Table 1 (with its ablation, Table 2) and
Table 3 (with Table 4). DenseNet-BC, SE and the ablation's CIFAR-100 number differ; CBAM appears only in
Table 1. Both are kept; ``report.claims`` chooses which the report shows.

``PUBLISHED`` holds what the baselines' own authors published, each with its source, so the report can show
whether this project's baselines train as well as theirs did.
"""

from __future__ import annotations

from dataclasses import dataclass

COLUMNS = ("CIFAR-10", "CIFAR-100", "ImageNet")
# The paper's nets and recipe (Sec. 4.1 / 5.1), as settings: a claimed size is tested only where a run used them
PAPER_PROFILE = "configs/paper.yaml"

# paper_row -> {column: accuracy}; the ablation rows come from Tables 2 and 4 (CIFAR only)
CLAIMS: dict[str, dict[str, dict[str, float]]] = {
    "table1": {
        "resnet": {"CIFAR-10": 93.6, "CIFAR-100": 72.7, "ImageNet": 75.3},
        "densenet_bc": {"CIFAR-10": 94.4, "CIFAR-100": 73.3, "ImageNet": 76.4},
        "se_resnet": {"CIFAR-10": 95.2, "CIFAR-100": 75.7, "ImageNet": 77.2},
        "cbam_resnet": {"CIFAR-10": 95.5, "CIFAR-100": 76.1, "ImageNet": 77.7},
        "ours": {"CIFAR-10": 96.2, "CIFAR-100": 80.5, "ImageNet": 78.3},
        "ablation": {"CIFAR-10": 93.8, "CIFAR-100": 73.6},
    },
    "table3": {
        "resnet": {"CIFAR-10": 93.6, "CIFAR-100": 72.7, "ImageNet": 75.3},
        "densenet_bc": {"CIFAR-10": 95.0, "CIFAR-100": 76.4, "ImageNet": 77.6},
        "se_resnet": {"CIFAR-10": 95.3, "CIFAR-100": 77.1, "ImageNet": 77.2},
        "ours": {"CIFAR-10": 96.2, "CIFAR-100": 80.5, "ImageNet": 78.3},
        "ablation": {"CIFAR-10": 93.8, "CIFAR-100": 74.3},
    },
}
TABLE_NAMES = {"table1": "Tables 1-2", "table3": "Tables 3-4"}

# which paper column a data set kind is compared against; the embedded set has none
COLUMN_OF_KIND = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}


@dataclass(frozen=True)
class Benchmark:
    """Whether a data set *is* one of the paper's benchmarks, decided once from evidence: ``column`` (the paper's
    column it is compared with) when it is, else None; ``why`` in words. Every paper-relative part of the report
    (Δ vs paper, the published-baselines column, the claimed-size part of each verdict, summary.json, the
    MLflow report run's tags) follows ``column``."""

    column: str | None
    why: str

    @property
    def is_benchmark(self) -> bool:
        return self.column is not None


def benchmark_of(kind: str, *, official: bool, subset: bool) -> Benchmark:
    """``official``: the fetch stage matched the published checksum (for ImageNet: all three official files);
    ``subset``: preprocess kept only part of it (``preprocess.subset``/``classes``)."""
    column = COLUMN_OF_KIND.get(kind)
    if column is None:
        return Benchmark(None, f"of kind `{kind}`, none of the paper's benchmarks (CIFAR-10, CIFAR-100, ImageNet)")
    if not official:
        return Benchmark(None, f"not the published {column} (no published checksum matched)")
    if subset:
        return Benchmark(None, f"a subset of the published {column}")
    return Benchmark(column, f"the published {column} (its published checksum matched), whole")


@dataclass(frozen=True)
class Published:
    """A number the original authors of a baseline published (top-1 accuracy, %), with where it comes from."""

    value: float
    source: str
    mean_of: int | None = None  # the number of runs it is a mean of; None: a single figure (best or only run)
    std: float | None = None

    @property
    def cell(self) -> str:
        if self.mean_of:
            return f"{self.value:.2f} ± {self.std:.2f} (mean of {self.mean_of})"
        return f"{self.value:.2f} (single figure)"


# paper_row -> column -> the original authors' own number (errors turned into accuracies: 100 - error)
PUBLISHED: dict[str, dict[str, Published]] = {
    "resnet": {
        "CIFAR-10": Published(
            93.39,
            "He et al. 2016, Table 6: ResNet-110, 6.61 ± 0.16 % error over 5 runs (best 6.43 %), option A shortcuts, "
            "warm-up at lr 0.01",
            mean_of=5,
            std=0.16,
        ),
        "ImageNet": Published(
            75.20,
            "Hu et al. 2018 (SE), Table 2: ResNet-50 re-implemented, 24.80 % top-1 error, 224 centre crop "
            "(Woo et al. 2018, Table 4, report 24.56 %)",
        ),
    },
    "densenet_bc": {
        "CIFAR-10": Published(95.49, "Huang et al. 2017, Table 2: DenseNet-BC (L=100, k=12), 4.51 % error on C10+"),
        "CIFAR-100": Published(77.73, "Huang et al. 2017, Table 2: DenseNet-BC (L=100, k=12), 22.27 % error on C100+"),
        "ImageNet": Published(74.98, "Huang et al. 2017, Table 3: DenseNet-121, 25.02 % top-1 error, single crop"),
    },
    "se_resnet": {
        "ImageNet": Published(
            76.71,
            "Hu et al. 2018, Table 2: SE-ResNet-50, 23.29 % top-1 error, 224 centre crop "
            "(Woo et al. 2018, Table 4, report 23.14 %)",
        ),
    },
    "cbam_resnet": {
        "ImageNet": Published(77.34, "Woo et al. 2018, Table 4: ResNet-50 + CBAM, 22.66 % top-1 error"),
    },
}


def claimed_gain(version: str, row: str | None, column: str | None) -> float | None:
    """How many points the paper claims its method beats ``row`` by on ``column`` in ``version``'s tables."""
    ours, other = CLAIMS[version].get("ours", {}), CLAIMS[version].get(row or "", {})
    if column is None or column not in ours or column not in other:
        return None
    return round(ours[column] - other[column], 2)
