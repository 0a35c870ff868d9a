"""evaluate@<dataset>:
python -m stages.evaluate TRAIN_DIR DATA_DIR OUT_DIR CONFUSION_DIR METRICS_DIR"""

from pipeline.cli import run_stage, usage
from pipeline.config import Params
from pipeline.evaluate import evaluate_dataset


def main(params: Params, argv: list[str]) -> None:
    usage(__doc__, argv, 5)
    train_dir, data_dir, out_dir, confusion_dir, metrics_dir = argv
    evaluate_dataset(train_dir, data_dir, params, out_dir, confusion_dir, metrics_dir)


if __name__ == "__main__":
    run_stage(main)
