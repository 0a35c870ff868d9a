"""Every other section of ``params.yaml`` (the grid, the recipe, the methods, the search, compute, MLflow,
evaluation, the study, the report) and ``Params``, the whole of it."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import Float, Frozen, Int, Label, Name, NotBool, PosInt, Seed, unique_entries
from pipeline.config.datasets import DatasetCfg
from pipeline.redact import carries_credentials

MAX_EPOCHS = 10_000
MAX_LR = 10.0
Epochs = Annotated[PosInt, Field(le=MAX_EPOCHS)]  # far above any recipe: a typo, not a run of years
LearningRate = Annotated[Float, Field(gt=0, le=MAX_LR)]
PAPER_ROWS = ("resnet", "densenet_bc", "se_resnet", "cbam_resnet", "ours", "ablation")


class GridCfg(Frozen):
    """What `dvc repro` runs: the data set x method x seed grid."""

    datasets: list[Name] = Field(min_length=1)
    methods: list[Name] = Field(min_length=1)
    seeds: list[Seed] = Field(min_length=1)

    @field_validator("datasets", "methods", "seeds")
    @classmethod
    def _unique(cls, v: list) -> list:
        return unique_entries(v)


class TrainCfg(Frozen):
    """The training recipe (paper Sec. 4.1); methods may override any field."""

    # Upper bounds refuse typos that would run for ever or overflow (epochs: 1e12, lr: 1e308): far above any
    # published recipe (the paper's longest run is 300 epochs; large-batch recipes scale lr to a few units)
    epochs: Epochs
    batch_size: PosInt  # global, split evenly over the data-parallel workers
    eval_batch_size: PosInt = 500
    lr: LearningRate
    momentum: Annotated[Float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[Float, Field(ge=0, le=1)] = 1e-4
    # Paper Sec. 4.1: step (divide by 10 at the milestones); Sec. 3.2: cosine annealing. Both offered.
    schedule: Literal["step", "cosine"] = "step"
    milestones: list[PosInt] = []
    gamma: Annotated[Float, Field(gt=0, le=1)] = 0.1
    # He et al. 2016 (Sec. 4.2) trained ResNet-110 at lr 0.01 until the training error fell below 80 % ("about
    # 400 iterations", one CIFAR epoch at batch 128), then at the schedule's lr. Not in the paper: 0 = off.
    warmup_epochs: Annotated[Int, Field(ge=0)] = 0
    warmup_lr: LearningRate = 0.01
    crop_padding: Annotated[Int, Field(ge=0, le=16)] = 4
    flip: bool = True
    # Not in the paper: recompute BatchNorm statistics over this many train batches before each evaluation
    # (0: off). Short runs need it; see pipeline.train.engine.recalibrate_bn.
    bn_recalibration: Annotated[Int, Field(ge=0)] = 0
    # Streamed (JPEG: ImageNet) data only: each epoch reads the train shards in a new seeded order, and each worker
    # draws its batches at random from a buffer of this many decoded images (Ray Data's local shuffle buffer);
    # the shards mix classes already (preprocess.interleave). 0: the shards' own order. In-memory data is
    # permuted whole every epoch and ignores it.
    shuffle_buffer: Annotated[Int, Field(ge=0)] = 2000

    @model_validator(mode="after")
    def _milestones(self) -> TrainCfg:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be < epochs={self.epochs}")
        if self.schedule == "step":
            ms = self.milestones
            if ms != sorted(set(ms)):
                raise ValueError(f"milestones={ms} must be strictly increasing")
            late = [m for m in ms if m >= self.epochs]
            if late:
                raise ValueError(
                    f"milestones={ms}: {late} at or past the last epoch (epochs={self.epochs}); "
                    f"allowed: epochs 1..{self.epochs - 1}"
                )
        return self


class MethodVariant(Frozen):
    """What a method becomes on ImageNet-kind data sets (e.g. ResNet-110 -> ResNet-50): unset fields keep
    the method's own."""

    model: str | None = None
    args: dict[str, Any] | None = None
    train: dict[str, Any] = {}


class MethodCfg(Frozen):
    """One row of the paper's tables: a registered model, its arguments and recipe overrides."""

    model: str
    args: dict[str, Any] = {}
    label: Label
    paper_row: Literal[PAPER_ROWS] | None = None  # type: ignore[valid-type]
    train: dict[str, Any] = {}  # overrides of the shared recipe
    imagenet: MethodVariant | None = None  # the model used on ImageNet-kind data sets (224 px inputs)

    def model_and_args(self, imagenet: bool) -> tuple[str, dict[str, Any]]:
        """(registered model, its arguments): the ImageNet variant's where asked and defined, else the method's."""
        v = self.imagenet if imagenet else None
        if v is None:
            return self.model, dict(self.args)
        return v.model or self.model, dict(self.args if v.args is None else v.args)


Section = Literal["train", "args"]
SECTIONS: tuple[str, ...] = get_args(Section)


def split_key(key: str) -> tuple[Section, str]:
    """``train.<field>`` (a recipe field) or ``args.<argument>`` (a model argument): the one reading of the
    dotted keys a search space or an override names."""
    section, dot, name = key.partition(".")
    if section not in SECTIONS or not dot or not name:
        raise ValueError(f"{key!r}: allowed: train.<recipe field> or args.<model argument>")
    return section, name  # type: ignore[return-value]


class Overrides(Frozen):
    """Values set on top of a method's recipe (``train``) and model arguments (``args``): what a search trial
    or an adopted search sets (``train.lr``, ``args.placement``), what a study cell sets."""

    train: dict[str, Any] = {}
    args: dict[str, Any] = {}

    @classmethod
    def parse(cls, flat: dict[str, Any] | None) -> Overrides:
        """From dotted keys (``{"train.lr": 0.05, "args.placement": "stage"}``)."""
        out: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for key, value in (flat or {}).items():
            section, name = split_key(key)
            out[section][name] = value
        return cls(**out)

    def flat(self) -> dict[str, Any]:
        """Back to dotted keys: the form search spaces, Tune configurations and records use."""
        return {**{f"train.{k}": v for k, v in self.train.items()}, **{f"args.{k}": v for k, v in self.args.items()}}


class SearchDim(Frozen):
    type: Literal["loguniform", "uniform", "choice"]
    low: Annotated[float | None, NotBool] = None
    high: Annotated[float | None, NotBool] = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> SearchDim:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty 'values' list")
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"{self.type} needs low < high, got low={self.low}, high={self.high}")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError(f"loguniform needs low > 0, got {self.low}")
        return self


class TuneCfg(Frozen):
    """The search track (Ray Tune, ASHA): every searched method gets the same budget -- ``num_samples`` trials
    of up to ``epochs`` epochs -- over the same shared recipe space ``space`` (``train.<field>`` keys), plus
    its own architecture choices ``arch_space[method]`` (``args.<argument>`` keys) inside that budget. The
    first trial of every search is the unsearched recipe: a searched setting replaces it only if it beats it
    on the held-out split by more than that split's noise (``pipeline.tune``)."""

    # [] : no search, every method trains at the recipe (the like-for-like table); all : every method of
    # grid.methods; a list that leaves some compared methods out is refused unless allow_unequal is true
    methods: list[Name] | Literal["all"] = []
    allow_unequal: bool = False  # opt in to searching only some compared methods (the report marks those rows)
    num_samples: PosInt = 4
    epochs: Epochs = 3
    grace_period: PosInt = 1
    reduction_factor: Annotated[Float, Field(gt=1)] = 2
    # trials side by side; auto: as many as the cluster has room for (compute.cpus_per_worker CPUs or one GPU each)
    max_concurrent_trials: PosInt | Literal["auto"] = "auto"
    val_fraction: Annotated[Float, Field(gt=0, lt=1)] = 0.2
    train_subset: PosInt | None = None  # train on the first N of the non-validation images
    seed: Seed = 0
    # random: seeded random search (Ray's BasicVariantGenerator); tpe: Optuna's Tree-structured Parzen Estimator
    # (Ray Tune's OptunaSearch), seeded, its first tpe_startup_trials trials (the recipe's among them) random
    searcher: Literal["random", "tpe"] = "random"
    tpe_startup_trials: PosInt = 3
    space: dict[str, SearchDim] = {}
    arch_space: dict[Name, dict[str, SearchDim]] = {}
    # fail: a crashed trial fails the stage with its error; exclude: recorded FAILED (error tag), not in the decision
    on_trial_error: Literal["fail", "exclude"] = "fail"

    def space_of(self, method: str) -> dict[str, SearchDim]:
        """What ``method``'s search covers: the shared recipe space, then its own architecture choices."""
        return {**self.space, **self.arch_space.get(method, {})}

    @model_validator(mode="after")
    def _grace(self) -> TuneCfg:
        if self.grace_period > self.epochs:
            raise ValueError(f"grace_period={self.grace_period} must be <= epochs={self.epochs}")
        if self.searcher == "tpe" and self.tpe_startup_trials >= self.num_samples:
            raise ValueError(
                f"tpe_startup_trials={self.tpe_startup_trials} must be < num_samples={self.num_samples}: TPE models "
                "only the trials after its random start-up, so with these settings every trial would be random "
                "(set searcher: random, or more num_samples)"
            )
        bad = [k for k in self.space if _section(k) != "train"]
        if bad:
            raise ValueError(
                f"space keys {bad} must start with 'train.': the shared space is the recipe every searched method "
                "shares; a method's own architecture choices go under tune.arch_space.<method>"
            )
        bad = [f"{m}.{k}" for m, dims in self.arch_space.items() for k in dims if _section(k) != "args"]
        if bad:
            raise ValueError(f"arch_space keys {bad} must start with 'args.' (model arguments)")
        return self


def _section(key: str) -> str | None:
    try:
        return split_key(key)[0]
    except ValueError:
        return None


Switch = bool | Literal["auto"]


class FastPathCfg(Frozen):
    """Speed-ups that leave results unchanged beyond numerical noise (tested on CPU). ``auto``: on with a CUDA
    GPU, off on CPUs (where bf16 and compilation rarely pay)."""

    bf16: Switch = "auto"  # bfloat16 autocast of forward and loss
    channels_last: Switch = "auto"  # NHWC memory format for the net and its inputs
    compile: Switch = "auto"  # torch.compile of the training model
    data_on_device: Switch = "auto"  # keep the uint8 split on the GPU; crop and flip there, per sample


class ComputeCfg(Frozen):
    """Where and how wide to train. ``auto``: one worker per GPU if the cluster has GPUs, else 2 CPU workers."""

    num_workers: PosInt | Literal["auto"] = "auto"
    use_gpu: bool | Literal["auto"] = "auto"
    cpus_per_worker: PosInt = 1
    storage_path: str = Field(default=".ray_results", min_length=1)  # relative to the repository, or s3://bucket/prefix
    # Preprocessed data for workers on other nodes: None reads data/processed/<d> in place (one machine, or a
    # shared file system); a URI (s3://bucket/prefix) gets a copy per data content, which every node reads.
    shared_data: str | None = None
    # Training jobs side by side (each num_workers workers, one lane of units after another); auto: as many
    # as the cluster's free CPUs (or GPUs) hold.
    concurrency: PosInt | Literal["auto"] = "auto"
    max_failures: Annotated[Int, Field(ge=0)] = 0  # worker-group restarts per job, each from the last checkpoint
    keep_checkpoints: PosInt = 2
    # A unit is checkpointed (Ray Train's report, a barrier) after an epoch once this many seconds passed since its
    # last checkpoint, and after its last epoch; 0: every epoch. A kill loses at most this long of a unit's work.
    checkpoint_every_s: Annotated[Float, Field(ge=0, le=86_400)] = 60.0
    # Streamed (JPEG: ImageNet) training: the object-store memory the decoded stream may hold, MiB (Ray Data's
    # resource limit): bounded whatever the data set's size. Raise it for many training workers.
    stream_memory_mb: PosInt = 1024
    fast_path: FastPathCfg = FastPathCfg()

    @field_validator("storage_path", "shared_data")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        """params.yaml's values are kept verbatim in dvc.lock and DVC's run cache: a key in a URI would be too."""
        if v is not None and carries_credentials(v):
            raise ValueError(
                "carries a credential; allowed: a URI without one (s3://bucket/prefix): every node takes its "
                "credentials from its environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, an instance profile)"
            )
        return v

    @field_validator("shared_data")
    @classmethod
    def _shared_uri(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v and not v.startswith("/"):
            raise ValueError(f"{v!r} is neither a URI (s3://bucket/prefix) nor an absolute path every node can read")
        return v


class MlflowCfg(Frozen):
    experiment_prefix: str = Field(default="attncnn", min_length=1)
    # MLflow system metrics (CPU, memory, disk, network; GPU with NVIDIA's library) sampled into each training
    # unit's run every this many seconds while it trains; 0: off
    system_metrics_s: Annotated[Float, Field(ge=0)] = 5.0


class EvaluateCfg(Frozen):
    batch_size: PosInt = 500
    attention_images: Annotated[Int, Field(ge=0, le=64)] = 6


STUDY_HOW_TO_RUN = "dvc exp run -S study.enabled=true"  # the one command, in the report and in the logs


class StudyCfg(Frozen):
    """The attention study (``pipeline.study``): the paper's attention net (``method``) trained in every cell of
    ``placements`` x ``scalings`` and in each named ``variant`` (model arguments on top of the method's), over
    ``seeds``, with the collapse diagnostics recorded every epoch. The method's recipe, its ``epochs``
    replaced when given. Off by default: see params.yaml for why and how to run it."""

    enabled: bool = False
    dataset: Name = "embedded"
    method: Name = "attn_resnet"
    seeds: list[Seed] = Field(default=[0, 1, 2], min_length=1)
    epochs: Epochs | None = None  # None: the method's recipe on the data set
    placements: list[str] = Field(default=["final", "stage", "stage_branch", "block"], min_length=1)
    scalings: list[str] = Field(default=["none", "hw", "residual", "gated"], min_length=1)
    variants: dict[Name, dict[str, Any]] = {}  # name -> model arguments (placement, scaling, temperature, ...)
    diagnostics: PosInt = 64  # probe images for the per-epoch diagnostics
    # "trains as well as final": the CI of (cell - final) lies above -margin test top-1 points (non-inferiority)
    margin: Annotated[Float, Field(gt=0)] = 1.0

    @field_validator("seeds", "placements", "scalings")
    @classmethod
    def _unique(cls, v: list) -> list:
        return unique_entries(v)

    def cells(self) -> dict[str, dict[str, Any]]:
        """Cell name -> the model arguments it sets: ``<placement>/<scaling>`` for the grid, then the variants."""
        grid = {f"{p}/{s}": {"placement": p, "scaling": s} for p in self.placements for s in self.scalings}
        return {**grid, **self.variants}

    @model_validator(mode="after")
    def _reference(self) -> StudyCfg:
        if "final" not in self.placements:
            raise ValueError(
                f"placements={self.placements}: must include 'final', the one-module network every cell is "
                "compared with"
            )
        return self


class ReportCfg(Frozen):
    # The paper prints two versions of its tables (Tables 1/2 and 3/4) that disagree; show either or both.
    claims: list[Literal["table1", "table3"]] = Field(default=["table1", "table3"], min_length=1)


class Params(Frozen):
    grid: GridCfg
    datasets: dict[Name, DatasetCfg]
    train: TrainCfg
    methods: dict[Name, MethodCfg]
    tune: TuneCfg = TuneCfg()
    compute: ComputeCfg = ComputeCfg()
    mlflow: MlflowCfg = MlflowCfg()
    evaluate: EvaluateCfg = EvaluateCfg()
    report: ReportCfg = ReportCfg()
    study: StudyCfg = StudyCfg()

    def dataset(self, name: str) -> DatasetCfg:
        return self.datasets[name]

    @property
    def searched(self) -> list[str]:
        """The methods the search track covers (``tune.methods``, with ``all`` = every method of the grid)."""
        return list(self.grid.methods) if self.tune.methods == "all" else list(self.tune.methods)

    def method(self, name: str) -> MethodCfg:
        return self.methods[name]

    def variant(self, method: str, dataset: str | None) -> MethodVariant | None:
        """The method's ImageNet variant when ``dataset`` is ImageNet-kind, else None."""
        d = self.datasets.get(dataset) if dataset is not None else None
        return self.methods[method].imagenet if d is not None and d.kind == "imagenet" else None

    def model_of(self, method: str, dataset: str | None = None) -> tuple[str, dict[str, Any]]:
        """(registered model, its arguments) of ``method`` on ``dataset``."""
        return self.methods[method].model_and_args(imagenet=self.variant(method, dataset) is not None)

    def recipe_layers(self, method: str, dataset: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The recipe's layers in the order they apply, each named by its setting: the shared recipe, the data
        set's, the method's, its ImageNet variant's."""
        v = self.variant(method, dataset)
        layers = [("train", self.train.model_dump())]
        layers += [(f"datasets.{dataset}.train", self.datasets[dataset].train)] if dataset in self.datasets else []
        layers += [(f"methods.{method}.train", self.methods[method].train)]
        return layers + ([(f"methods.{method}.imagenet.train", v.train)] if v is not None else [])

    def recipe(self, method: str, dataset: str | None = None, overrides: dict[str, Any] | None = None) -> TrainCfg:
        """The recipe's layers (``recipe_layers``), then ``overrides``, applied in that order, re-validated."""
        merged = {k: x for _, layer in self.recipe_layers(method, dataset) for k, x in layer.items()}
        return TrainCfg.model_validate({**merged, **(overrides or {})})
