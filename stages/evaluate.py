"""evaluate@<dataset>-<method>:
python -m stages.evaluate METHOD_TRAIN_DIR DATA_DIR OUT_DIR CONFUSION_DIR METRICS_FILE"""

from pipeline.cli import run_stage, usage
from pipeline.config import Params
from pipeline.evaluate import evaluate_method


def main(params: Params, argv: list[str]) -> None:
    usage(__doc__, argv, 5)
    method_dir, data_dir, out_dir, confusion_dir, metrics = argv
    evaluate_method(method_dir, data_dir, params.evaluate, out_dir, confusion_dir, metrics)


if __name__ == "__main__":
    run_stage(main)
