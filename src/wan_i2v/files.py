"""Files that appear whole or not at all."""

from __future__ import annotations

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
