"""tune@<dataset>: python -m stages.tune DATASET DATA_DIR OUT_FILE"""

from pipeline.cli import check_storage, run_stage, usage
from pipeline.config import Params
from pipeline.models.checks import check_models
from pipeline.tune import tune_dataset


def main(params: Params, argv: list[str]) -> None:
    usage(__doc__, argv, 3)
    tune_dataset(params, *argv)


if __name__ == "__main__":
    run_stage(main, checks=[check_models, check_storage])
