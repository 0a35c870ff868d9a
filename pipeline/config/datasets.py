"""The ``datasets`` section: where each data set comes from (``fetch``) and how it is preprocessed, by kind."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.checksum import Checksum
from pipeline.config.base import Float, Frozen, Int, NotBool, PosInt, Seed
from pipeline.redact import carries_credentials


class EmbeddedFetchCfg(Frozen):
    """The embedded glyphs set made locally from a seed (see ``pipeline.data.embedded``)."""

    seed: Seed = 0
    num_train: Annotated[Int, Field(gt=0, le=50_000)] = 4000  # at most CIFAR-10's size: the archive is CIFAR-10's
    num_test: Annotated[Int, Field(gt=0, le=10_000)] = 1000
    clutter: Annotated[Int, Field(ge=0, le=64)] = 6  # distractor fragments per image
    noise: Annotated[Float, Field(ge=0, le=1)] = 0.25  # background noise amplitude
    distractors: Annotated[Int, Field(ge=0, le=16)] = 1  # whole glyphs of other digits, dimmer than the object
    occlusion: Annotated[Float, Field(ge=0, le=1)] = 0.5  # chance that a distractor lies over the object


def _check_checksum(v: str | None) -> str | None:
    if v is not None:
        Checksum.parse(v)
    return v


# ``env:NAME``: the source is the value of environment variable NAME, read at fetch time (pipeline.data.sources)
ENV_SOURCE = "env:"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_source(v: str, *, official: bool, what: str) -> str:
    """A fetch source as params.yaml may hold it: ``env:NAME``, or a location (``check_location``) that carries
    no credential. DVC records a stage's params verbatim in dvc.lock and its run cache (and git commits
    params.yaml): a URL's password, token or signature would be kept there for good."""
    if v.startswith(ENV_SOURCE):
        if not _ENV_NAME.fullmatch(v.removeprefix(ENV_SOURCE)):
            raise ValueError(f"{v!r} names no environment variable; allowed: env:NAME, NAME of letters, digits and _")
        return v
    if carries_credentials(v):
        raise ValueError(
            "carries a credential (a password, token or signature): params.yaml's values are kept verbatim in "
            "dvc.lock and DVC's run cache, and git would commit it; allowed: env:NAME, the URL in environment "
            "variable NAME, read at fetch time and never recorded"
        )
    return check_location(v, official=official, what=what)


def check_location(v: str, *, official: bool, what: str) -> str:
    """A fetch source the fetcher can read, refused here (at ``check``) rather than at fetch: ``official`` (where
    allowed), an http(s):// URL, ``s3://bucket/<what>``, or a local path (no other scheme)."""
    allowed = ("official, " if official else "") + f"an http(s):// URL, s3://bucket/{what}, or a local path"
    scheme, sep, rest = v.partition("://")
    if not sep:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+:(?!\\)", v):  # s3:/bucket, ftp:host: a scheme, malformed
            raise ValueError(f"{v!r} looks like a URL without '://'; allowed: {allowed}")
        return v
    if scheme.lower() in ("http", "https"):
        if not rest.split("/", 1)[0]:
            raise ValueError(f"{v!r} has no host; allowed: {allowed}")
        return v
    if scheme.lower() == "s3":
        bucket, _, key = rest.partition("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) or (what == "key" and not key.strip("/")):
            raise ValueError(f"{v!r} is not a valid S3 URI; expected s3://bucket/{what} (bucket: 3-63 of a-z 0-9 . -)")
        return v
    raise ValueError(f"{v!r}: the {scheme}:// scheme is not supported; allowed: {allowed}")


class CifarFetchCfg(Frozen):
    """Where the CIFAR binary archive comes from; it is always verified against ``checksum`` before use."""

    # official | http(s):// URL | local path | s3://bucket/key | env:NAME (a URL with a credential: see _check_source)
    source: str = Field(default="official", min_length=1)
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

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return v if v == "official" else _check_source(v, official=True, what="key")


class ImageNetFetchCfg(Frozen):
    """ILSVRC2012 from a local folder or ``s3://bucket/prefix`` (it has no public download)."""

    source: str = Field(min_length=1)  # folder or s3://bucket/prefix, or env:NAME naming a variable that holds one
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

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_source(v, official=False, what="prefix")


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
    # Train shards mix classes, so that training can shuffle by shard order and a bounded buffer instead of a
    # global shuffle each epoch (pipeline.data.manifest.ray_dataset): the train images, in source order (class by
    # class), are cut into runs of this many (one ranged read each) and the runs dealt into shards in a seeded
    # random order; each shard's rows are then permuted. 0: shards class by class, as the source is.
    interleave: Annotated[Int, Field(ge=0)] = 10
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
