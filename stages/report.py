"""report: python -m stages.report RESULTS_DIR DATA_ROOT OUT_DIR"""

from pipeline.cli import run_stage, usage
from pipeline.config import Params
from pipeline.report.build import make_report


def main(params: Params, argv: list[str]) -> None:
    usage(__doc__, argv, 3)
    make_report(params, *argv)


if __name__ == "__main__":
    run_stage(main)
