"""preprocess@<dataset>: python -m stages.preprocess DATASET RAW_DIR OUT_DIR"""

from pipeline.cli import run_stage, usage
from pipeline.config import ConfigError, Params
from pipeline.data.preprocess import preprocess_dataset


def main(params: Params, argv: list[str]) -> None:
    usage(__doc__, argv, 3)
    dataset, raw_dir, out_dir = argv
    if dataset not in params.datasets:
        raise ConfigError(f"data set {dataset!r} has no entry under 'datasets'; defined: {sorted(params.datasets)}")
    preprocess_dataset(raw_dir, out_dir, params.dataset(dataset).preprocess)


if __name__ == "__main__":
    run_stage(main)
