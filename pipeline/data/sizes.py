"""A data set's size before it is fetched, from its kind and its preprocess settings: what the plan prices and
what the batch check compares a recipe's batch with, before any download (``check_batches``)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import DatasetCfg, Params
from pipeline.config_checks import batch_setting, search_values
from pipeline.data.subset import split_sizes, take_per_class

# Image counts of a data set not preprocessed yet, by kind: (train, test, image side, classes)
KIND_SIZES: dict[str, tuple[int, int, int, int]] = {
    "cifar10": (50_000, 10_000, 32, 10),
    "cifar100": (50_000, 10_000, 32, 100),
    "imagenet": (1_281_167, 50_000, 224, 1000),
}


@dataclass(frozen=True)
class DataSize:
    """A data set's size as training sees it, known before it is fetched: train and test images after
    preprocessing, the image side and the class count."""

    name: str
    num_train: int
    num_test: int
    image_size: int
    num_classes: int
    source: str  # "manifest", or how it was estimated


def kind_size(cfg: DatasetCfg) -> tuple[int, int, int, int]:
    """(train, test, image side, classes) of the data set as fetched, before preprocessing."""
    if cfg.kind == "embedded":
        return cfg.fetch.num_train, cfg.fetch.num_test, 32, 10
    train, test, side, classes = KIND_SIZES[cfg.kind]
    return train, test, (cfg.preprocess.image_size if cfg.kind == "imagenet" else side), classes


def expected_size(name: str, cfg: DatasetCfg) -> DataSize:
    """From the data set's kind, ``preprocess.classes`` and ``subset`` applied per class: exact for the whole
    data set, approximate where a subset assumes even per-class counts."""
    train, test, side, classes = kind_size(cfg)
    p = cfg.preprocess
    kept = classes if p.classes is None else min(classes, p.classes if isinstance(p.classes, int) else len(p.classes))
    n_train = kept * take_per_class(train // classes, p.subset.train)
    n_test = kept * take_per_class(test // classes, p.subset.test)
    exact = kept == classes and p.subset.train is None and p.subset.test is None
    return DataSize(name, n_train, n_test, side, kept, f"{cfg.kind}'s size" + ("" if exact else ", approximate"))


def check_batches(p: Params) -> list[str]:
    """Every grid method's batch fits the images it trains on, on every data set of the grid: the train split
    for the recipe track; for a searched method also the search's train split (less the held-out part,
    ``split_sizes``), with every batch size ``tune.space`` may set. A batch larger than
    that trains one short batch an epoch, silently. Needs only the settings (no data)."""
    found: dict[tuple[str, int, str, int], list[str]] = {}  # (setting, batch, split, images) -> methods
    space = p.tune.space.get("train.batch_size")
    searched_batches = [v for _, v in search_values(space) if isinstance(v, int)] if space else []
    for d in p.grid.datasets:
        n = expected_size(d, p.datasets[d]).num_train
        search_n, _ = split_sizes(n, 0, p.tune.val_fraction, p.tune.train_subset)
        for m in p.grid.methods:
            recipe = (batch_setting(p, d, m), p.recipe(m, d).batch_size)
            checks = [(recipe, "the train split", n)]
            if m in p.searched:
                checks += [(recipe, "the search's train split", search_n)]
                checks += [
                    (("tune.space.train.batch_size", b), "the search's train split", search_n) for b in searched_batches
                ]
            for (setting, batch), split, images in checks:
                if batch > images:
                    found.setdefault((setting, batch, f"{split} of {d}", images), []).append(m)
    return [
        f"{setting} = {batch}: larger than the {images:,} images of {split} (methods {methods}): every epoch would be "
        f"one short batch; allowed: at most {images}"
        for (setting, batch, split, images), methods in found.items()
    ]
