"""fetch@<dataset>: python -m stages.fetch DATASET OUT_DIR"""

from pipeline.cli import run_stage, usage
from pipeline.config import ConfigError, Params
from pipeline.data.fetch import fetch_dataset


def main(params: Params, argv: list[str]) -> None:
    usage(__doc__, argv, 2)
    dataset, out_dir = argv
    if dataset not in params.datasets:
        raise ConfigError(f"data set {dataset!r} has no entry under 'datasets'; defined: {sorted(params.datasets)}")
    fetch_dataset(dataset, params.dataset(dataset), out_dir)


if __name__ == "__main__":
    run_stage(main)
