"""Files that appear whole or not at all, and a file's SHA-256."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def written_whole(dest: Path) -> Iterator[Path]:
    """Yield `DEST.partial` to write; when the block succeeds it replaces `dest` in one rename.

    On any failure (a full disk, a broken download, a kill before the rename) `dest` is untouched
    and the partial file is removed, so a reader never sees half a video or half an index.
    """
    partial = dest.with_name(dest.name + ".partial")
    try:
        yield partial
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    """The file's SHA-256 (hex), read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()
