"""train@<dataset>: python -m stages.train DATASET DATA_DIR TUNE_FILE OUT_DIR METRICS_FILE"""

from pipeline.cli import check_storage, run_stage, usage
from pipeline.config import Params
from pipeline.models.checks import check_models
from pipeline.train.run import train_dataset


def main(params: Params, argv: list[str]) -> None:
    usage(__doc__, argv, 5)
    train_dataset(params, *argv)


if __name__ == "__main__":
    run_stage(main, checks=[check_models, check_storage])
