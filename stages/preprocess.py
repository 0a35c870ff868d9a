"""preprocess@<dataset>: python -m stages.preprocess RAW_DIR OUT_DIR"""

from pipeline.cli import run_stage, usage
from pipeline.config import Params
from pipeline.data.preprocess import preprocess_dataset


def main(params: Params, argv: list[str]) -> None:
    usage(__doc__, argv, 2)
    preprocess_dataset(*argv)


if __name__ == "__main__":
    run_stage(main)
