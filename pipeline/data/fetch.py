"""The fetch stage: a data set's raw data put under ``data/raw/<d>`` with ``source.json`` saying what it is.

- embedded: the glyphs set made from its seed (``pipeline.data.embedded``), as a CIFAR-10 binary
  archive;
- CIFAR-10/100: the official *binary* archive (fixed-size records, so no pickle is ever loaded), downloaded
  (``pipeline.data.download``) and verified against its published MD5, then member by member and in its
  content (``pipeline.data.cifar``), so a finished fetch output is data preprocess can read;
- ImageNet: an index of the source (``pipeline.data.imagenet_index``); the images stay where they are.

Every output is written to a temporary directory and renamed into place, so an interrupted stage leaves
nothing that looks finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.checksum import Checksum
from pipeline.config import CifarDataCfg, DatasetCfg
from pipeline.io import atomic_path, sha256_file, write_json
from pipeline.redact import redact_url

from .cifar import LAYOUT_OF_KIND, OFFICIAL, read_cifar_binary
from .download import fetch_file
from .embedded import write_embedded_archive
from .imagenet_index import index_source
from .limits import Limits, Retry
from .manifest import SOURCE
from .sources import resolve_source


def fetch_dataset(name: str, cfg: DatasetCfg, out_dir: str | Path) -> dict[str, Any]:
    """Put data set ``name``'s raw data (or, for ImageNet, its index) under ``out_dir`` with ``source.json``."""
    out_dir, as_set = Path(out_dir), cfg
    cfg = _with_source_resolved(name, cfg)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if cfg.kind == "embedded":
            archive = "archive.tar.gz"
            write_embedded_archive(cfg.fetch, tmp / archive)
            source = {
                "format": "cifar-binary",
                "archive": archive,
                "sha256": sha256_file(tmp / archive),
                "origin": {"generator": "pipeline.data.embedded", "settings": cfg.fetch.model_dump()},
            }
        elif cfg.kind in ("cifar10", "cifar100"):
            source = _fetch_cifar(name, cfg, tmp, partial=out_dir.parent / f".{out_dir.name}.part")
        else:
            source = index_source(cfg.fetch, tmp)
            # preprocess reads the images from the root: an env:NAME source stays the name (resolved there), so
            # source.json never holds the URL's credential
            source["root"] = as_set.fetch.source
        source["dataset"] = name
        source["kind"] = cfg.kind
        write_json(tmp / SOURCE, source)
    return source


def _with_source_resolved(name: str, cfg: DatasetCfg) -> DatasetCfg:
    """``cfg`` with an ``env:NAME`` source replaced by the variable's value (``resolve_source``), for this fetch
    only: what is recorded (source.json, messages, MLflow) is that value redacted, never params.yaml's form."""
    if cfg.kind == "embedded":
        return cfg
    official = cfg.kind in ("cifar10", "cifar100")
    setting, what = f"datasets.{name}.fetch.source", "key" if official else "prefix"
    source = resolve_source(cfg.fetch.source, setting=setting, official=official, what=what)
    return cfg.model_copy(update={"fetch": cfg.fetch.model_copy(update={"source": source})})


def _fetch_cifar(name: str, cfg: CifarDataCfg, tmp: Path, *, partial: Path) -> dict[str, Any]:
    """Download and verify the archive (checksum, then every member and the content: ``read_cifar_binary``),
    so a finished fetch output is data preprocess can read."""
    official = OFFICIAL[cfg.kind]
    where = official.url if cfg.fetch.source == "official" else cfg.fetch.source
    checksum = Checksum.parse(cfg.fetch.checksum or official.checksum)
    published = str(checksum) == official.checksum  # then the size is known exactly
    f = cfg.fetch
    limits = Limits(
        max_bytes=official.size if published else f.max_bytes,
        deadline_s=f.deadline_s,
        min_rate_bytes_s=f.min_rate_bytes_s,
        rate_window_s=f.rate_window_s,
        setting=f"datasets.{name}.fetch",
        cap_note=f": the published archive is {official.size:,} bytes" if published else "",
    )
    archive = Path(official.url).name
    digests = fetch_file(
        where, tmp / archive, checksum, Retry(f.retries, f.backoff_s, f.timeout_s), limits, partial=partial
    )
    read_cifar_binary(tmp / archive, LAYOUT_OF_KIND[cfg.kind], label=redact_url(where))  # the content, too
    return {
        "format": "cifar-binary",
        "archive": archive,
        "sha256": digests["sha256"],
        "md5": digests["md5"],
        # "official" only when the published md5 itself matched, whatever checksum the user pinned
        "origin": {
            "source": redact_url(where),
            "verified_against": str(checksum),
            "published": official.checksum,
            "official": f"md5:{digests['md5']}" == official.checksum,
        },
    }
