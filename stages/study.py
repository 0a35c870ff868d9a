"""study: python -m stages.study DATASET DATA_DIR OUT_FILE"""

from pipeline.cli import check_storage, run_stage, usage
from pipeline.config import Params
from pipeline.models.checks import check_models
from pipeline.study import run_study


def main(params: Params, argv: list[str]) -> None:
    usage(__doc__, argv, 3)
    run_study(params, *argv)


if __name__ == "__main__":
    run_stage(main, checks=[check_models, check_storage])
