"""The numbers the paper claims (top-1 accuracy, %), transcribed from ../shared/paper.txt.

The paper prints two versions of its results that disagree: Table 1 (with its ablation, Table 2) and
Table 3 (with Table 4). DenseNet-BC, SE and the ablation's CIFAR-100 number differ; CBAM appears only in
Table 1. Both are kept; ``report.claims`` chooses which the report shows.
"""

from __future__ import annotations

COLUMNS = ("CIFAR-10", "CIFAR-100", "ImageNet")

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
