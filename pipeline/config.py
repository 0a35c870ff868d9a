"""Typed, frozen settings validated at the edge.

``params.yaml`` is the only place settings live. ``load_params`` reads it once, checks every value (and the
cross-field rules: milestones inside the run, methods that exist, model arguments the factory accepts) and
returns frozen models; library code takes these, never a raw dict. Every problem found is reported in one
``ConfigError`` that names the key, the bad value and what is allowed, before Ray or training starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.data.limits import Checksum

PAPER_ROWS = ("resnet", "densenet_bc", "se_resnet", "cbam_resnet", "ours", "ablation")


class ConfigError(ValueError):
    """Invalid settings; the message lists every bad key, its value and what is allowed."""


class Frozen(BaseModel):
    # allow_inf_nan: .inf / .nan are never a setting (a timeout of .inf crashes the fetch, an lr of .nan trains
    # nothing); load_params names them wherever they are, free-form sections included (``_non_finite``)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _not_bool(v: Any) -> Any:
    """pydantic's lax mode reads ``true`` as 1: ``epochs: true`` would train one epoch. Numbers only."""
    if isinstance(v, bool):
        raise ValueError(f"a boolean ({str(v).lower()}) where a number is expected; allowed: a number")
    return v


NotBool = BeforeValidator(_not_bool)
Int = Annotated[int, NotBool]  # an int field that refuses true/false
Float = Annotated[float, NotBool]  # a float field that refuses true/false
PosInt = Annotated[Int, Field(gt=0)]
Seed = Annotated[Int, Field(ge=0)]

# Data set and method names become paths (data/raw/<d>, results/<d>/<m>) through dvc.yaml: no `/`, no `..`
NAME_PATTERN = r"[A-Za-z0-9_-]+"


def _name(v: str) -> str:
    if not re.fullmatch(NAME_PATTERN, v):
        raise ValueError(
            f"{v!r} is not a valid name; allowed: letters, digits, '_' and '-' ({NAME_PATTERN}), "
            "as it becomes a path through dvc.yaml"
        )
    return v


Name = Annotated[str, AfterValidator(_name)]


def unique_entries(v: list) -> list:
    if len(set(v)) != len(v):
        raise ValueError(f"entries must be unique, got {v}")
    return v


class GridCfg(Frozen):
    """What `dvc repro` runs: the data set x method x seed grid."""

    datasets: list[Name] = Field(min_length=1)
    methods: list[Name] = Field(min_length=1)
    seeds: list[Seed] = Field(min_length=1)

    @field_validator("datasets", "methods", "seeds")
    @classmethod
    def _unique(cls, v: list) -> list:
        return unique_entries(v)


class EmbeddedFetchCfg(Frozen):
    """The cluttered-glyphs set made locally from a seed (see ``pipeline.data.embedded``)."""

    seed: Seed = 0
    num_train: Annotated[Int, Field(gt=0, le=50_000)] = 4000  # at most CIFAR-10's size: the archive is CIFAR-10's
    num_test: Annotated[Int, Field(gt=0, le=10_000)] = 1000
    clutter: Annotated[Int, Field(ge=0, le=64)] = 6  # distractor fragments per image
    noise: Annotated[Float, Field(ge=0, le=1)] = 0.25  # background noise amplitude


def _check_checksum(v: str | None) -> str | None:
    if v is not None:
        Checksum.parse(v)
    return v


class CifarFetchCfg(Frozen):
    """Where the CIFAR binary archive comes from; it is always verified against ``checksum`` before use."""

    source: str = Field(default="official", min_length=1)  # official | http(s):// URL | local path | s3://bucket/key
    checksum: str | None = None  # "md5:<hex>" or "sha256:<hex>"; None: the published checksum pinned in code
    retries: PosInt = 5  # attempts on connection errors, truncation and HTTP 5xx
    backoff_s: Annotated[Float, Field(ge=0)] = 1.0  # wait backoff_s * 2**i before retry i+1
    timeout_s: Annotated[Float, Field(gt=0)] = 60.0  # per connection / read
    # Limits on what a source may send (a hostile or broken server must not fill the disk or hang the stage).
    # The published archive is capped at its known size (170,052,171 / 168,513,733 bytes); any other file
    # (a mirror, another checksum) at max_bytes.
    max_bytes: PosInt = 250_000_000
    deadline_s: Annotated[Float, Field(gt=0)] = 3600.0  # the whole fetch, every retry and wait included
    # slower than min_rate_bytes_s on average over any rate_window_s seconds: give up (a trickling server)
    min_rate_bytes_s: Annotated[Float, Field(ge=0)] = 10_000.0
    rate_window_s: Annotated[Float, Field(gt=0)] = 60.0

    @field_validator("checksum")
    @classmethod
    def _sum(cls, v: str | None) -> str | None:
        return _check_checksum(v)


class ImageNetFetchCfg(Frozen):
    """ILSVRC2012 from a local folder or ``s3://bucket/prefix`` (it has no public download)."""

    source: str = Field(min_length=1)  # folder or s3://bucket/prefix
    # official: ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, ILSVRC2012_devkit_t12.tar.gz;
    # folders: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG; auto: official if its files are there
    layout: Literal["auto", "official", "folders"] = "auto"
    checksums: dict[str, str] = {}  # file name -> checksum, overriding the pinned md5s of the official files
    # Largest archive member read into memory (a per-class train tar, the devkit, one image): checked against
    # the member's declared size before a byte is read. The largest official member is a class tar of ~150 MB.
    max_member_bytes: PosInt = 512 << 20

    @field_validator("checksums")
    @classmethod
    def _sums(cls, v: dict[str, str]) -> dict[str, str]:
        for c in v.values():
            _check_checksum(c)
        return v


class SubsetCfg(Frozen):
    """Per class: an int keeps the first N images, a float in (0, 1] that fraction (at least one); null keeps all."""

    train: Annotated[int | float | None, NotBool] = None
    test: Annotated[int | float | None, NotBool] = None

    @field_validator("train", "test")
    @classmethod
    def _per_class(cls, v: int | float | None) -> int | float | None:
        if v is None or (isinstance(v, int) and v > 0) or (isinstance(v, float) and 0 < v <= 1):
            return v
        raise ValueError("allowed: an image count per class >= 1, a fraction in (0, 1], or null for all")


class PreprocessCfg(Frozen):
    subset: SubsetCfg = SubsetCfg()
    classes: PosInt | list[str] | None = None  # keep the first N classes, or these names (ImageNet: wnids)


class ImageNetPreprocessCfg(PreprocessCfg):
    # Evaluation is torchvision's reference protocol, Resize(resize) + CenterCrop(image_size) (256 / 224); the
    # test split is stored as exactly that input (PNG, lossless), the train split as JPEGs of shorter side resize
    resize: PosInt = 256  # train JPEGs: shorter side; evaluation: Resize(resize)
    image_size: PosInt = 224  # training crop (random-resized) size; evaluation: CenterCrop(image_size)
    quality: Annotated[Int, Field(ge=1, le=100)] = 90  # JPEG quality of the stored train images
    shard_size: PosInt = 1000  # images per Parquet shard (one Ray task each)
    on_bad_image: Literal["skip", "error"] = "skip"  # undecodable image: skip it (counted in the manifest) or fail
    on_missing_class: Literal["error", "skip"] = "error"  # a class without train or val images

    @model_validator(mode="after")
    def _sizes(self) -> ImageNetPreprocessCfg:
        if self.image_size > self.resize:
            raise ValueError(f"image_size={self.image_size} must be <= resize={self.resize}")
        return self


class EmbeddedDataCfg(Frozen):
    kind: Literal["embedded"]
    fetch: EmbeddedFetchCfg = EmbeddedFetchCfg()
    preprocess: PreprocessCfg = PreprocessCfg()
    train: dict[str, Any] = {}  # overrides of the shared recipe on this data set


class CifarDataCfg(Frozen):
    kind: Literal["cifar10", "cifar100"]
    fetch: CifarFetchCfg = CifarFetchCfg()
    preprocess: PreprocessCfg = PreprocessCfg()
    train: dict[str, Any] = {}  # overrides of the shared recipe on this data set


class ImageNetDataCfg(Frozen):
    kind: Literal["imagenet"]
    fetch: ImageNetFetchCfg
    preprocess: ImageNetPreprocessCfg = ImageNetPreprocessCfg()
    train: dict[str, Any] = {}  # overrides of the shared recipe on this data set (paper: 90 epochs, batch 256)


DatasetCfg = Annotated[EmbeddedDataCfg | CifarDataCfg | ImageNetDataCfg, Field(discriminator="kind")]
DATASET_KINDS = ("embedded", "cifar10", "cifar100", "imagenet")


class TrainCfg(Frozen):
    """The training recipe (paper Sec. 4.1); methods may override any field."""

    epochs: PosInt
    batch_size: PosInt  # global, split evenly over the data-parallel workers
    eval_batch_size: PosInt = 500
    lr: Annotated[Float, Field(gt=0)]
    momentum: Annotated[Float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[Float, Field(ge=0)] = 1e-4
    # Paper Sec. 4.1: step (divide by 10 at the milestones); Sec. 3.2: cosine annealing. Both offered.
    schedule: Literal["step", "cosine"] = "step"
    milestones: list[PosInt] = []
    gamma: Annotated[Float, Field(gt=0, le=1)] = 0.1
    # He et al. 2016 (Sec. 4.2) trained ResNet-110 at lr 0.01 until the training error fell below 80 % ("about
    # 400 iterations", one CIFAR epoch at batch 128), then at the schedule's lr. Not in the paper: 0 = off.
    warmup_epochs: Annotated[Int, Field(ge=0)] = 0
    warmup_lr: Annotated[Float, Field(gt=0)] = 0.01
    crop_padding: Annotated[Int, Field(ge=0, le=16)] = 4
    flip: bool = True
    # Not in the paper: recompute BatchNorm statistics over this many train batches before each evaluation
    # (0: off). Short runs need it; see pipeline.train.engine.recalibrate_bn.
    bn_recalibration: Annotated[Int, Field(ge=0)] = 0

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
    label: str
    paper_row: Literal[PAPER_ROWS] | None = None  # type: ignore[valid-type]
    train: dict[str, Any] = {}  # overrides of the shared recipe
    imagenet: MethodVariant | None = None  # the model used on ImageNet-kind data sets (224 px inputs)

    def model_and_args(self, imagenet: bool) -> tuple[str, dict[str, Any]]:
        """(registered model, its arguments): the ImageNet variant's where asked and defined, else the method's."""
        v = self.imagenet if imagenet else None
        if v is None:
            return self.model, dict(self.args)
        return v.model or self.model, dict(self.args if v.args is None else v.args)


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
    epochs: PosInt = 3
    grace_period: PosInt = 1
    reduction_factor: Annotated[Float, Field(gt=1)] = 2
    # trials side by side; auto: as many as the cluster has room for (compute.cpus_per_worker CPUs or one GPU each)
    max_concurrent_trials: PosInt | Literal["auto"] = "auto"
    val_fraction: Annotated[Float, Field(gt=0, lt=1)] = 0.2
    train_subset: PosInt | None = None  # train on the first N of the non-validation images
    seed: Seed = 0
    space: dict[str, SearchDim] = {}
    arch_space: dict[Name, dict[str, SearchDim]] = {}
    # fail: a crashed trial fails the stage with its error; exclude: recorded FAILED (error tag), not in the decision
    on_trial_error: Literal["fail", "exclude"] = "fail"

    @model_validator(mode="after")
    def _grace(self) -> TuneCfg:
        if self.grace_period > self.epochs:
            raise ValueError(f"grace_period={self.grace_period} must be <= epochs={self.epochs}")
        bad = [k for k in self.space if not k.startswith("train.")]
        if bad:
            raise ValueError(
                f"space keys {bad} must start with 'train.': the shared space is the recipe every searched method "
                "shares; a method's own architecture choices go under tune.arch_space.<method>"
            )
        bad = [f"{m}.{k}" for m, dims in self.arch_space.items() for k in dims if not k.startswith("args.")]
        if bad:
            raise ValueError(f"arch_space keys {bad} must start with 'args.' (model arguments)")
        return self


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
    fast_path: FastPathCfg = FastPathCfg()

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


class StudyCfg(Frozen):
    """The attention study (``pipeline.study``): the paper's attention net (``method``) trained in every cell of
    ``placements`` x ``scalings`` and in each named ``variant`` (model arguments on top of the method's), over
    ``seeds``, with the collapse diagnostics recorded every epoch. The method's recipe, its ``epochs``
    replaced when given. Off by default: see params.yaml for why and how to run it."""

    enabled: bool = False
    dataset: Name = "embedded"
    method: Name = "attn_resnet"
    seeds: list[Seed] = Field(default=[0, 1, 2], min_length=1)
    epochs: PosInt | None = None  # None: the method's recipe on the data set
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

    def recipe(self, method: str, dataset: str | None = None, overrides: dict[str, Any] | None = None) -> TrainCfg:
        """The shared recipe with the data set's, the method's (and its variant's), then ``overrides`` applied
        in that order, re-validated."""
        v = self.variant(method, dataset)
        merged = {
            **self.train.model_dump(),
            **(self.datasets[dataset].train if dataset in self.datasets else {}),
            **self.methods[method].train,
            **(v.train if v is not None else {}),
            **(overrides or {}),
        }
        return TrainCfg.model_validate(merged)


# ---------------------------------------------------------------------------------------------------------
# Loading and the checks that span sections


def _fmt_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


_MISSING = object()


def _key_loc(raw: dict, loc: tuple) -> tuple:
    """``loc`` without pydantic's union/validator tags (e.g. ``constrained-int``), which are not keys."""
    out: list = []
    cur: Any = raw
    for p in loc:
        if (isinstance(cur, dict) and p in cur) or (isinstance(cur, list) and isinstance(p, int) and p < len(cur)):
            cur = cur[p]
        elif isinstance(p, str) and ("[" in p or "-" in p or p in DATASET_KINDS):
            continue  # a union member's tag, not a key
        else:
            cur = _MISSING
        out.append(p)
    return tuple(out)


def format_errors(source: str, errors: list[str]) -> str:
    return f"{source}: invalid settings:\n" + "\n".join(f"  - {e}" for e in errors)


def _lookup(raw: dict, loc: tuple) -> Any:
    cur: Any = raw
    for p in loc:
        if (isinstance(cur, dict) and p in cur) or (isinstance(cur, list) and isinstance(p, int) and p < len(cur)):
            cur = cur[p]
        else:
            return None
    return cur


def _cross_checks(p: Params) -> list[str]:
    """The rules that span sections and need no model code (``pipeline.models.checks`` has the rest)."""
    errs: list[str] = []
    for d in p.grid.datasets:
        if d not in p.datasets:
            errs.append(f"grid.datasets: {d!r} has no entry under 'datasets'; defined: {sorted(p.datasets)}")
    for m in p.grid.methods:
        if m not in p.methods:
            errs.append(f"grid.methods: unknown method {m!r}; defined under 'methods': {sorted(p.methods)}")
    errs += _search_checks(p) + _study_checks(p)
    train_fields = set(TrainCfg.model_fields)
    for name, m in p.methods.items():
        bad_t = sorted(set(m.train) - train_fields)
        if bad_t:
            errs.append(f"methods.{name}.train: unknown field(s) {bad_t}; allowed: {sorted(train_fields)}")
        else:
            try:
                p.recipe(name)
            except ValidationError as e:
                errs += [
                    f"methods.{name}.train.{_fmt_loc(x['loc'])} = {x.get('input')!r}: "
                    + x["msg"].removeprefix("Value error, ")
                    for x in e.errors()
                ]
        if m.imagenet is not None and set(m.imagenet.train) - train_fields:
            errs.append(
                f"methods.{name}.imagenet.train: unknown field(s) {sorted(set(m.imagenet.train) - train_fields)}; "
                f"allowed: {sorted(train_fields)}"
            )
    for d in p.grid.datasets:
        if d in p.datasets:
            errs += _dataset_recipe_checks(p, d, errs)
    if p.compute.num_workers != "auto" and p.train.batch_size % p.compute.num_workers:
        errs.append(
            f"train.batch_size = {p.train.batch_size}: must be divisible by "
            f"compute.num_workers = {p.compute.num_workers}"
        )
    return list(dict.fromkeys(errs))


def _dataset_recipe_checks(p: Params, d: str, errs: list[str]) -> list[str]:
    """Every grid method's recipe on data set ``d`` is valid and splits over the workers."""
    train_fields = set(TrainCfg.model_fields)
    bad_t = sorted(set(p.datasets[d].train) - train_fields)
    if bad_t:
        return [f"datasets.{d}.train: unknown field(s) {bad_t}; allowed: {sorted(train_fields)}"]
    out: list[str] = []
    recipe_errs: dict[str, list[str]] = {}
    for name in p.grid.methods:
        if name not in p.methods or any(e.startswith(f"methods.{name}.") for e in errs):
            continue
        try:
            r = p.recipe(name, d)
        except ValidationError as e:
            for x in e.errors():
                where = f"{_fmt_loc(x['loc'])} = {x.get('input')!r}: " if x["loc"] else ""
                recipe_errs.setdefault(where + x["msg"].removeprefix("Value error, "), []).append(name)
            continue
        if p.compute.num_workers != "auto" and r.batch_size % p.compute.num_workers:
            out.append(
                f"datasets.{d}.train.batch_size = {r.batch_size} (method {name}): must be divisible by "
                f"compute.num_workers = {p.compute.num_workers}"
            )
    out += [
        f"datasets.{d}.train = {p.datasets[d].train} (on top of train, under the overrides of methods {ms}): {msg}"
        for msg, ms in recipe_errs.items()
    ]
    return out


def _study_checks(p: Params) -> list[str]:
    """The study's data set is one the pipeline prepares, and its method is a method (the model code checks
    that every cell builds: ``pipeline.models.checks``)."""
    s, errs = p.study, []
    if s.dataset not in p.grid.datasets:
        errs.append(
            f"study.dataset: {s.dataset!r} is not in grid.datasets {p.grid.datasets} (only those are fetched and "
            "preprocessed, and the study stage reads its data set even when the study is off); allowed: one of them"
        )
    if s.method not in p.methods:
        errs.append(f"study.method: unknown method {s.method!r}; defined under 'methods': {sorted(p.methods)}")
    return errs


def _search_checks(p: Params) -> list[str]:
    """The search track must be equal: every compared method searched, or none (unless opted out)."""
    t, errs = p.tune, []
    searched = p.searched
    for m in searched:
        if m not in p.methods:
            errs.append(f"tune.methods: unknown method {m!r}; defined under 'methods': {sorted(p.methods)}")
    for key in t.space:
        if key.partition(".")[2] not in TrainCfg.model_fields:
            errs.append(
                f"tune.space.{key}: not a recipe field; allowed: {sorted('train.' + f for f in TrainCfg.model_fields)}"
            )
    errs += _space_value_checks(p)
    for m in t.arch_space:
        if searched and m not in searched:  # dormant while nothing is searched
            errs.append(f"tune.arch_space.{m}: {m!r} is not searched; allowed: methods of tune.methods = {t.methods!r}")
    if not searched:
        return errs
    if t.num_samples < 2:
        errs.append(
            f"tune.num_samples = {t.num_samples}: must be >= 2 when searching; the first trial of every search is "
            "the unsearched recipe, the baseline a searched setting must beat"
        )
    if not t.space and not t.arch_space:
        errs.append("tune.space: empty, and no tune.arch_space: a search needs something to search")
    left_out = [m for m in p.grid.methods if m not in searched]
    if left_out and not t.allow_unequal:
        errs.append(
            f"tune.methods = {t.methods!r} searches {len(searched)} of the {len(p.grid.methods)} compared methods "
            f"and leaves out {left_out}: their comparison would measure the search as much as the method. "
            "Allowed: [] (no search: every method at the recipe), all (every method of grid.methods, same budget "
            "and space), or set tune.allow_unequal: true to accept it (the report then marks those rows)"
        )
    return errs


def search_values(dim: SearchDim) -> list[tuple[str, Any]]:
    """(what, value) a search dimension may set that a check can try: each choice, or the two bounds."""
    if dim.type == "choice":
        return [("choice value", v) for v in dim.values or []]
    return [("low", dim.low), ("high", dim.high)]


def _space_value_checks(p: Params) -> list[str]:
    """Every value ``tune.space`` may set is one the recipe takes, with every searched method (every method of
    the grid while nothing is searched) on every data set of the grid."""
    errs: list[str] = []
    pairs = []
    for m in p.searched or p.grid.methods:
        for d in p.grid.datasets:
            if m in p.methods and d in p.datasets:
                try:
                    p.recipe(m, d)
                except ValidationError:
                    continue  # the recipe itself is bad: said elsewhere
                pairs.append((m, d))
    for key, dim in p.tune.space.items():
        field = key.partition(".")[2]
        if field not in TrainCfg.model_fields:
            continue  # said elsewhere
        kind = TrainCfg.model_fields[field].annotation
        if dim.type != "choice" and kind is not float:
            errs.append(
                f"tune.space.{key}: {dim.type} samples real numbers, but {field} takes "
                f"{getattr(kind, '__name__', kind)}; allowed: {{type: choice, values: [...]}}"
            )
            continue
        for what, v in search_values(dim):
            for m, d in pairs:
                try:
                    p.recipe(m, d, {field: v})
                except ValidationError as e:
                    why = "; ".join(
                        (f"{_fmt_loc(x['loc'])}: " if tuple(x["loc"]) not in ((), (field,)) else "")
                        + x["msg"].removeprefix("Value error, ")
                        for x in e.errors()
                    )
                    errs.append(
                        f"tune.space.{key}: {what} {v!r} is refused by the recipe (method {m}, data set {d}): {why}"
                    )
                    break
    return errs


def validate_params(raw: dict, source: str = "params.yaml") -> Params:
    """Validate a raw params mapping; raise one ``ConfigError`` listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    non_finite = _non_finite(raw)
    nf_errs = [
        f"{_fmt_loc(loc)} = {v!r}: not a finite number; allowed: a finite number (.inf, -.inf and .nan never are "
        "a setting)"
        for loc, v in non_finite
    ]
    try:
        p = Params.model_validate(raw)
    except ValidationError as e:
        grouped: dict[tuple, list[str]] = {}
        locs = [_key_loc(raw, tuple(x["loc"])) for x in e.errors()]
        deeper = {loc[:i] for loc in locs for i in range(len(loc))}
        said = {loc for loc, _ in non_finite}
        for x, loc in zip(e.errors(), locs, strict=True):
            if x["type"] == "literal_error" and loc in deeper:
                continue  # a union's other branch (e.g. a list) got further: its error is the one that matters
            if loc in said:
                continue  # a non-finite number: said once above, wherever it is
            msg = x["msg"].removeprefix("Value error, ")
            if x["loc"] and x["loc"][-1] == "[key]":  # a bad key of a mapping (a data set or method name)
                grouped.setdefault((loc[:-1], ""), []).append(f"key {msg}")
                continue
            if x["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc, msg = (*loc, "kind"), f"unknown data set kind; allowed: {', '.join(DATASET_KINDS)}"
            field = re.match(r"(\w+)=", msg)  # a model-level rule names its field first: point at it
            if x["type"] == "value_error" and field and isinstance(_lookup(raw, loc), dict):
                loc = (*loc, field.group(1))
                msg = msg.split(": ", 1)[-1] if ": " in msg else msg
            shown = "" if x["type"] == "missing" else f" = {_lookup(raw, loc)!r}"
            grouped.setdefault((loc, shown), []).append(msg)
        # a union gives one message per alternative: join them into one line
        errs = [f"{_fmt_loc(loc)}{shown}: {' or '.join(dict.fromkeys(msgs))}" for (loc, shown), msgs in grouped.items()]
        raise ConfigError(format_errors(source, nf_errs + errs)) from None
    if nf_errs:  # in a free-form section (model arguments, recipe overrides): the models took them
        raise ConfigError(format_errors(source, nf_errs))
    errs = _cross_checks(p) + _keys_dvc_reads(raw, p)
    if errs:
        raise ConfigError(format_errors(source, errs))
    return p


# dvc.yaml's stages list these keys of each data set in the grid; DVC fails on a missing one, so say it first
DVC_DATASET_KEYS = ("kind", "fetch", "preprocess", "train")


def _keys_dvc_reads(raw: dict, p: Params) -> list[str]:
    return [
        f"datasets.{d}.{k}: missing; the DVC stages read it (write `{k}: {{}}` for no settings)"
        for d in p.grid.datasets
        if d in p.datasets
        for k in DVC_DATASET_KEYS
        if k not in raw["datasets"][d]
    ]


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file (run from the repository root, or pass its path)")
    return validate_params(read_yaml(path), str(path))


_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_yaml(path: str | Path) -> Any:
    """``path`` parsed as YAML (safe types only), or one ``ConfigError``: a syntax error with its line and
    column, or a key written twice in one mapping (YAML would silently keep the last), with both lines."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        dups = _duplicate_keys(node) if node is not None else []
        if dups:
            raise ConfigError(format_errors(str(path), dups))
        return loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        raise ConfigError(f"{path}: {_yaml_problem(e)}") from None
    except yaml.YAMLError as e:  # e.g. a byte that is not UTF-8 text
        raise ConfigError(f"{path}: not readable as YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be settings") from None
    finally:
        loader.dispose()


def _yaml_problem(e: yaml.MarkedYAMLError) -> str:
    mark = e.problem_mark or e.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = e.problem or e.context or "invalid YAML"
    if e.context and e.problem:
        cm = e.context_mark
        what += f" ({e.context}" + (f" started at line {cm.line + 1}, column {cm.column + 1})" if cm else ")")
    if "'\\t'" in what:
        what += "; YAML is indented with spaces, never tabs"
    return where + what


def _duplicate_keys(node: yaml.Node, path: tuple = (), seen: set[int] | None = None) -> list[str]:
    """Keys written twice in one mapping, with the lines of both. A key brought in by a merge key (``<<``)
    and set again explicitly is an override, not a duplicate."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already walked (or a recursive one)
        return []
    seen.add(id(node))
    errs: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Node] = {}
        for k, v in node.value:
            if k.tag == _MERGE_TAG:
                errs += _duplicate_keys(v, path, seen)
                continue
            sub = path
            if isinstance(k, yaml.ScalarNode):
                sub = (*path, k.value)
                if (k.tag, k.value) in first:
                    errs.append(
                        f"{_fmt_loc(sub)}: duplicate key, written at {_at(first[k.tag, k.value])} and again at "
                        f"{_at(k)} (YAML would silently keep the last); write it once"
                    )
                else:
                    first[k.tag, k.value] = k
            errs += _duplicate_keys(v, sub, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            errs += _duplicate_keys(v, (*path, i), seen)
    return errs


def _at(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"


def _non_finite(node: Any, path: tuple = (), above: frozenset[int] = frozenset()) -> list[tuple[tuple, float]]:
    """(key path, value) of every .inf / -.inf / .nan in the raw tree, free-form sections included."""
    if isinstance(node, float):
        return [] if math.isfinite(node) else [(path, node)]
    if id(node) in above:  # a recursive alias
        return []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [hit for k, v in items for hit in _non_finite(v, (*path, k), above | {id(node)})]


def config_hash(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (run names, resume keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]
