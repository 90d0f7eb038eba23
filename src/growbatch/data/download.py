"""Downloads with MD5 verification, written to a temporary file and renamed only once the checksum passes.

The server can be replaced by a mirror that serves the same file names: the ``base_url``
argument, else the ``GROWBATCH_MIRROR`` environment variable, else the data set's official URL.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from ..atomic import write_atomically
from .dataset import DataError

__all__ = ["MIRROR_ENV", "extract_members", "fetch", "file_md5", "resolve_base_url"]

MIRROR_ENV = "GROWBATCH_MIRROR"
_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60.0


def resolve_base_url(default: str, base_url: str | None = None) -> str:
    """``base_url``, else ``$GROWBATCH_MIRROR``, else ``default``; always ending in ``/``."""
    chosen = base_url or os.environ.get(MIRROR_ENV) or default
    return chosen if chosen.endswith("/") else chosen + "/"


def file_md5(path: Path) -> str:
    """Hex MD5 of the file at ``path``, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, destination: Path, md5: str) -> Path:
    """Download ``url`` to ``destination`` unless a file with that MD5 is already there.

    Args:
        url: where to download from (http, https or file).
        destination: the file to write; its folder is created.
        md5: the expected hex MD5 of the whole file.

    Returns:
        ``destination``.

    Raises:
        DataError: the server cannot be reached or answers with an error, or the bytes received
            do not have the MD5 ``md5`` (nothing is written then).
    """
    if destination.is_file() and file_md5(destination) == md5:
        return destination

    def download(file: BinaryIO) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            while chunk := response.read(_CHUNK_BYTES):
                digest.update(chunk)
                file.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(f"the checksum of {url} failed: MD5 {digest.hexdigest()}, expected {md5}; nothing was "
                            f"written to {destination}. The download was corrupted or the mirror serves another "
                            f"file: try again, or set base_url / ${MIRROR_ENV} to another mirror")

    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(destination, download)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise DataError(f"could not download {url} ({reason}); check the network, set base_url / ${MIRROR_ENV} "
                        f"to a mirror with the same file names, or copy the files into {destination.parent}") from error
    return destination


def extract_members(archive: Path, members: Mapping[str, Path]) -> None:
    """Extract the regular files named in ``members`` (archive name -> destination) from a tar archive.

    Only the listed names are read and each is written to the path given, so links, absolute
    paths and ``..`` in the archive can never write elsewhere. Each file is written atomically.

    Raises:
        DataError: the archive cannot be read, or a listed member is missing or not a regular file.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            for name, destination in members.items():
                try:
                    member = tar.getmember(name)
                except KeyError:
                    raise DataError(f"{archive} lacks {name}; the archive is not the expected one "
                                    f"(delete it and download again)") from None
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    raise DataError(f"{name} in {archive} is not a regular file; the archive is not the expected one")
                destination.parent.mkdir(parents=True, exist_ok=True)
                with source:
                    write_atomically(destination, lambda file, source=source: _copy(source, file))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"{archive} is corrupt or truncated: the tar/gzip format check failed ({error}); "
                        f"delete it and download again") from error


def _copy(source: BinaryIO, target: BinaryIO) -> None:
    while chunk := source.read(_CHUNK_BYTES):
        target.write(chunk)
