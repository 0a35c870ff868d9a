"""Tar archives from outside are hostile input: every member is checked before anything is read or extracted.

Rejected, with an error naming the archive and the member: absolute paths, ``..`` components, symbolic and
hard links, device files and FIFOs (stricter than Python's ``tarfile`` ``data`` filter, which admits links
that stay inside the destination: no data set we read needs a link). Extraction additionally goes through
the ``data`` filter, so permissions and ownership from the archive are never applied.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from .errors import DataError


class UnsafeArchiveError(DataError):
    """An archive member that could write outside the destination or is not a plain file or directory."""


def check_member(archive: str, info: tarfile.TarInfo) -> None:
    name = info.name
    p = PurePosixPath(name)
    why = None
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        why = "absolute path"
    elif ".." in p.parts:
        why = "'..' path component"
    elif info.issym() or info.islnk():
        why = f"link to {info.linkname!r}"
    elif info.ischr() or info.isblk() or info.isfifo() or info.isdev():
        why = "device file or FIFO"
    elif not (info.isfile() or info.isdir()):
        why = f"unsupported member type {info.type!r}"
    if why:
        raise UnsafeArchiveError(
            f"{archive}: unsafe member {name!r} ({why}); refusing to read this archive. "
            "Only plain files and directories with relative paths are accepted: get the archive from a trusted source."
        )


def check_members(archive: str, members: Iterable[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    out = []
    for m in members:
        check_member(archive, m)
        out.append(m)
    return out


def open_checked(path: str | Path) -> tarfile.TarFile:
    """Open a (possibly compressed) tar file after checking every member; the caller closes it."""
    tar = tarfile.open(path, "r:*")  # noqa: SIM115  (returned open, the caller closes it)
    try:
        check_members(str(path), tar.getmembers())
    except BaseException:
        tar.close()
        raise
    return tar


def safe_extract(path: str | Path, dest: str | Path) -> list[str]:
    """Extract every member of ``path`` under ``dest`` after checking all of them; returns the member names."""
    with open_checked(path) as tar:
        tar.extractall(dest, filter="data")
        return tar.getnames()
