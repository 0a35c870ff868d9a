"""check: python -m stages.check OUT_FILE

Every setting validated, the nets' arguments included (a real CPU build of each net), before any stage does
work: dvc.yaml runs this stage first, so a bad value stops `dvc repro` before a download starts. The stages
that follow read OUT_FILE, whose content never changes, so they still re-run only when their own inputs do."""

from pathlib import Path

from pipeline.cli import check_storage, run_stage, usage
from pipeline.config import Params
from pipeline.data.sizes import check_batches
from pipeline.io import atomic_path
from pipeline.models.checks import check_models

VALID = "params.yaml passed validation\n"


def main(params: Params, argv: list[str]) -> None:
    usage(__doc__, argv, 1)
    with atomic_path(Path(argv[0])) as tmp:
        tmp.write_text(VALID)


if __name__ == "__main__":
    run_stage(main, checks=[check_models, check_batches, check_storage])
