"""Tar archives from outside are hostile input: every member is checked before anything is read or extracted.

Rejected, with an error naming the archive and the member: absolute paths, ``..`` components, symbolic and
hard links, device files and FIFOs (stricter than Python's ``tarfile`` ``data`` filter, which admits links
that stay inside the destination: no data set we read needs a link). Extraction additionally goes through
the ``data`` filter, so permissions and ownership from the archive are never applied.

Sizes are checked from the headers too (``open_checked``'s ``rule``): a decompression bomb -- a few MB
of gzip declaring a member of gigabytes -- is refused before its content is inflated. A corrupt,
truncated or non-tar file gives one ``DataError`` naming it (``readable``), never a traceback.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

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


# A member rule: None if the member is acceptable, else why not (e.g. its declared size is more than the
# format allows). It sees only the header, so it runs before a byte of the member is decompressed.
MemberRule = Callable[[tarfile.TarInfo], "str | None"]
UNREADABLE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError, OSError)


def unreadable(archive: str | Path, e: BaseException) -> DataError:
    why = " ".join(str(e).split())  # tarfile lists one line per compression it tried
    if isinstance(e, tarfile.ReadError) and "could not be opened" in why:
        why = "neither gzip, bzip2, xz nor tar"
    return DataError(
        f"{archive}: not a readable tar archive ({type(e).__name__}: {why}); it is corrupt, truncated or not a "
        "tar file: fetch it again or from another source"
    )


@contextlib.contextmanager
def readable(archive: str | Path) -> Iterator[None]:
    """Turn the many ways a corrupt or truncated archive fails (tar, gzip, zlib, EOF) into one ``DataError``."""
    try:
        yield
    except UNREADABLE as e:
        if isinstance(e, DataError):
            raise
        raise unreadable(archive, e) from None


def open_checked(
    path: str | Path, rule: MemberRule | None = None, max_members: int = 1 << 20, *, fileobj: BinaryIO | None = None
) -> tarfile.TarFile:
    """Open a (possibly compressed) tar file after checking every member; the caller closes it.

    Members are checked as their headers are read, each before the reader moves past its data: a member
    refused by ``check_member`` or ``rule`` stops the scan before its (possibly gigabytes of compressed-away)
    content is decompressed, and an archive of more than ``max_members`` members is refused the same way.
    """
    with readable(path):
        # returned open, the caller closes it; ``path`` only names it when ``fileobj`` holds the bytes
        tar = tarfile.open(None if fileobj else path, "r:*", fileobj)  # noqa: SIM115
    try:
        with readable(path):
            for i, m in enumerate(tar):
                if i >= max_members:
                    raise UnsafeArchiveError(
                        f"{path}: more than {max_members} members; this format has at most {max_members}: "
                        "get the archive from a trusted source"
                    )
                check_member(str(path), m)
                why = rule(m) if rule is not None else None
                if why:
                    raise UnsafeArchiveError(f"{path}: member {m.name!r}: {why}; refusing to read this archive")
    except BaseException:
        tar.close()
        raise
    return tar


def safe_extract(path: str | Path, dest: str | Path) -> list[str]:
    """Extract every member of ``path`` under ``dest`` after checking all of them; returns the member names."""
    with open_checked(path) as tar, readable(path):
        tar.extractall(dest, filter="data")
        return tar.getnames()
