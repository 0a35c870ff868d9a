"""Checksums: the ``md5:<hex>`` / ``sha256:<hex>`` strings settings and manifests carry, and the digests of a file.

A leaf (nothing of the project imported): the settings' schema validates a checksum with it, and the data
package verifies downloads with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20  # bytes read at a time

ALGORITHMS = ("md5", "sha256")


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # md5 | sha256
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """``"md5:<32 hex>"`` or ``"sha256:<64 hex>"``."""
        algo, _, digest = text.partition(":")
        want = {"md5": 32, "sha256": 64}.get(algo)
        if want is None or len(digest) != want or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise ValueError(f"checksum {text!r}: expected 'md5:<32 hex digits>' or 'sha256:<64 hex digits>'")
        return cls(algo, digest.lower())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


def file_digests(path: str | Path, algorithms: tuple[str, ...] = ALGORITHMS) -> dict[str, str]:
    hs = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            for h in hs.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hs.items()}
