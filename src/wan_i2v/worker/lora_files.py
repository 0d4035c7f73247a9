"""A job's LoRA sources as checked .safetensors files on local disk: a name in the worker's LoRA folder,
or an http(s) URL through a download cache.

A public endpoint reads files that strangers name, so each rule answers a threat:
- path tricks: a folder name is relative, has no `..`, backslash or control character, and its real
  path (symlinks followed) must lie inside the folder's real path, so a symlink cannot lead out;
- pickle: only `.safetensors` names are read, and every file's layout is checked byte for byte
  against its header (`check_safetensors`) before the loader sees it; nothing is ever unpickled;
- SSRF: URLs go through the image address guard (private and metadata addresses refused unless
  `WAN_URL_ALLOW` names them; every redirect checked), and a URL is checked against it before the cache
  is looked at, so a cache filled under other rules serves nothing they now refuse;
- huge or slow downloads: a byte cap (the declared length and the bytes counted), connect and read
  deadlines, and a deadline for the whole download that a trickling server cannot stretch;
- cache poisoning: a download lands in a temporary file, is hashed and checked, and only then renamed
  into the cache; a failed or corrupt download leaves nothing behind.

The cache is a folder of `<key>.safetensors` files with a `<key>.json` note each (shown URL, ETag,
sha256, size), keyed by the sha256 of the whole URL, bounded in bytes with the least recently used
files evicted first. A per-key `flock` makes concurrent jobs (threads here, or other workers sharing
the folder on a network volume) download a URL once: the second waits (never longer than a download
may take, plus a minute) and finds the file. A file
handed to a job is hard-linked into the job's own temporary folder inside the cache, so it stays
readable until the job ends even if an eviction, here or in another worker, removes the entry.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from ..errors import InputError, JobError
from .download import download, url_shown
from .lora import SAFETENSORS_SUFFIX, LoraError
from .netguard import BlockedAddressError, UrlPolicy
from .safetensors_layout import LayoutError, check_layout

log = logging.getLogger(__name__)

JOBS_FOLDER = "in-use"  # per-checkout folders of hard links, inside the cache folder
SHOWN_NAMES = 10
STALE_JOB_S = 24 * 3600
STALE_SLACK_S = 60  # beyond the download deadline: a lock held, or a .part idle, this long is a stopped worker's
LOCK_POLL_S = 0.5  # the longest pause between two tries of a busy lock


@dataclass(frozen=True)
class LoraFile:
    path: Path  # the local file to read; valid until the checkout ends
    shown: str  # the folder name as given, or the URL without its query string
    sha256: str
    size: int
    downloaded: bool  # this call downloaded it (False: a folder file, or a cache hit)


def is_url(source: str) -> bool:
    return source.split(":", 1)[0].lower() in ("http", "https") and "://" in source


def check_safetensors(path: Path, shown: str) -> None:
    """The safetensors layout (see `safetensors_layout`), as a LoraError naming `shown`."""
    try:
        check_layout(path)
    except LayoutError as exc:
        raise LoraError(f"{shown}: {exc}") from None


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@contextmanager
def _locked(path: Path, wait_s: float = 0.0) -> Iterator[bool]:
    """An exclusive flock on `path` (created if missing), tried for up to `wait_s` seconds (never a wait
    without end: a holder stuck on a network volume cannot hold a job); yields False if it stayed busy.

    The sweep removes lock files that nobody holds, so a lock won on a file that is no longer the one at
    `path` is let go and taken again on the new one (otherwise two holders could each have "the" lock)."""
    deadline, pause = time.monotonic() + wait_s, 0.01
    while True:
        with path.open("a") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        yield False
                        return
                    time.sleep(min(pause, left))
                    pause = min(2 * pause, LOCK_POLL_S)
            try:
                if _same_file(handle.fileno(), path):
                    yield True
                    return
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the file at `path` (not unlinked or replaced meanwhile)."""
    try:
        there = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _remove_unheld_lock(path: Path) -> bool:
    """Remove the lock file `path` if nobody holds it (taken without waiting, then unlinked while held)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # in use: a download or a wait for one
        if not _same_file(fd, path):
            return False
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)  # lets the flock go


def _resolved(path: Path) -> Path:
    """`path.resolve()` with a symlink loop as OSError(ELOOP), as Python 3.13 raises it (3.11 and 3.12
    raise RuntimeError)."""
    try:
        return path.resolve()
    except RuntimeError:
        raise OSError(errno.ELOOP, "a symlink loop") from None


class LoraStore:
    """Where a job's LoRA files come from: the folder, or URLs through the cache (see the module docstring)."""

    def __init__(
        self,
        folder: Path | None,
        cache_dir: Path,
        cache_max_bytes: int,
        max_file_bytes: int,
        policy: UrlPolicy,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        total_timeout_s: float = 600.0,
        lock_wait_s: float | None = None,
    ):
        self.folder, self.cache_dir = folder, Path(cache_dir)
        self.cache_max_bytes, self.max_file_bytes = cache_max_bytes, max_file_bytes
        self.policy = replace(
            policy, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s, total_timeout_s=total_timeout_s
        )
        # How long a job waits for another job's (or worker's) download of the same URL: longer than that
        # download may take, so a waiter gives up only on a holder that is stuck.
        self.lock_wait_s = total_timeout_s + STALE_SLACK_S if lock_wait_s is None else lock_wait_s
        self._hashes: dict[tuple, str] = {}  # (real path, size, mtime, inode) -> sha256 of a folder file

    @contextmanager
    def checkout(self) -> Iterator[Callable[[str, str], LoraFile]]:
        """`with store.checkout() as fetch:` `fetch(field, source)` gives a LoraFile that stays readable
        until the block ends; the links made for it are removed then."""
        made: list[Path] = []

        def fetch(field: str, source: str) -> LoraFile:
            if is_url(source):
                try:
                    if not made:
                        (self.cache_dir / JOBS_FOLDER).mkdir(parents=True, exist_ok=True)
                        made.append(Path(tempfile.mkdtemp(prefix="job-", dir=self.cache_dir / JOBS_FOLDER)))
                    return self._from_url(field, source, made[0])
                except OSError as exc:  # the operator's disk, not the caller's input: say where
                    raise JobError(
                        f"{field}: the LoRA download cache {self.cache_dir} cannot be used ({exc}); "
                        "the operator should check WAN_LORA_CACHE_DIR and its free space"
                    ) from None
            if ":" in source.split("/", 1)[0]:
                scheme = source.split(":", 1)[0]
                raise InputError(
                    f"{field}: {scheme!r} sources are not allowed; give a .safetensors name in the worker's "
                    "LoRA folder or an http(s) URL"
                )
            return self._from_folder(field, source)

        try:
            yield fetch
        finally:
            for folder in made:
                shutil.rmtree(folder, ignore_errors=True)

    # ---- the folder ---------------------------------------------------------------------------------
    def _from_folder(self, field: str, name: str) -> LoraFile:
        if self.folder is None or not self.folder.is_dir():
            where = f" ({self.folder} does not exist)" if self.folder is not None else ""
            raise InputError(
                f"{field}: this worker has no LoRA folder{where}; the operator sets WAN_LORA_DIR "
                "(or attaches a network volume with a loras/ folder). An http(s) URL works instead"
            )
        try:
            target = self._inside_folder(field, name)
            stat = target.stat()
            key = (str(target), stat.st_size, stat.st_mtime_ns, stat.st_ino)
            if key not in self._hashes:
                check_safetensors(target, f"{field} ({name})")
                self._hashes[key] = _sha256(target)
        except OSError as exc:  # a symlink loop, a name too long, a file that cannot be opened
            raise InputError(
                f"{field} ({name}): cannot be read ({exc.strerror or type(exc).__name__}); give a readable "
                f"{SAFETENSORS_SUFFIX} file in the LoRA folder"
            ) from None
        return LoraFile(target, name, self._hashes[key], stat.st_size, downloaded=False)

    def _inside_folder(self, field: str, name: str) -> Path:
        if "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise InputError(f"{field}: {name!r} has a backslash or a control character; give a plain file name")
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts:
            raise InputError(
                f"{field}: {name!r} is not allowed: give a name inside the LoRA folder (no absolute path, no '..')"
            )
        if pure.suffix != SAFETENSORS_SUFFIX:
            raise InputError(f"{field}: {name!r}: only {SAFETENSORS_SUFFIX} files are loaded (never pickle)")
        root, cache = _resolved(self.folder), _resolved(self.cache_dir)
        target = _resolved(root / pure)  # symlinks followed: where the name really leads
        if not target.is_relative_to(root):
            raise InputError(f"{field}: {name!r} leads out of the LoRA folder (a symlink); refused")
        if _in_cache(target, root, cache):
            raise InputError(
                f"{field}: {name!r} is in the worker's LoRA download cache, not a LoRA of the folder; refused"
            )
        if not target.exists():
            there = _listing(root, cache)
            listed = ", ".join(there[:SHOWN_NAMES]) + (", ..." if len(there) > SHOWN_NAMES else "")
            raise InputError(
                f"{field}: {name!r} is not in the LoRA folder; it has: {listed or 'no .safetensors files'}"
            )
        if not target.is_file():
            raise InputError(f"{field}: {name!r} is not a file")
        return target

    # ---- URLs and the cache -------------------------------------------------------------------------
    def _from_url(self, field: str, url: str, job_folder: Path) -> LoraFile:
        shown = url_shown(field, url)
        # The address rules first, cache or not: a URL that WAN_URL_ALLOW (or the private-address rule) now
        # refuses is not served from a cache that another worker, or an older setting, filled.
        try:
            self.policy.check_url(url)
        except BlockedAddressError as exc:
            raise InputError(f"{field}: {shown} refused: {exc}") from None
        except ValueError as exc:
            raise InputError(f"{field}: {shown}: {exc}") from None
        key = hashlib.sha256(url.encode()).hexdigest()
        entry, note = self.cache_dir / f"{key}{SAFETENSORS_SUFFIX}", self.cache_dir / f"{key}.json"
        link = job_folder / f"{len(list(job_folder.iterdir()))}{SAFETENSORS_SUFFIX}"
        with _locked(self.cache_dir / f"{key}.lock", self.lock_wait_s) as held:
            if not held:
                raise JobError(
                    f"{field}: {shown} is being downloaded by another job, which has held it over "
                    f"{self.lock_wait_s:g} s (its lock in the LoRA cache {self.cache_dir}); try again later"
                )
            known = _read_note(note) if entry.is_file() else None
            if known is not None and known["size"] != entry.stat().st_size:
                known = None  # a note that does not describe the file: fetched again
            fresh = None
            if known is None or known.get("etag"):
                fresh = self._download(field, url, shown, known.get("etag") if known else None)
            if fresh is None:  # a hit: no ETag to ask about, or the server said 304 Not Modified
                os.utime(entry)
                _link(entry, link)
                return LoraFile(link, shown, known["sha256"], known["size"], downloaded=False)
            temporary, answer, digest = fresh
            try:
                if answer.size > self.cache_max_bytes:  # bigger than the whole cache: this job's only
                    os.replace(temporary, link)
                    entry.unlink(missing_ok=True)
                    note.unlink(missing_ok=True)
                else:
                    os.replace(temporary, entry)
                    _write_note(note, {"url": shown, "etag": answer.etag, "sha256": digest, "size": answer.size})
                    _link(entry, link)
            except BaseException:
                temporary.unlink(missing_ok=True)  # still there if the rename itself failed
                raise
        self._evict()
        return LoraFile(link, shown, digest, answer.size, downloaded=True)

    def _download(self, field: str, url: str, shown: str, etag: str | None):
        """(temporary file, answer, sha256) of a checked download, or None when the server says 304."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="download-", suffix=".part", dir=self.cache_dir)
        temporary = Path(name)
        digest = hashlib.sha256()
        started = time.monotonic()
        try:
            with os.fdopen(handle, "wb") as out:

                def write(chunk: bytes) -> None:
                    digest.update(chunk)
                    out.write(chunk)

                answer = download(
                    field,
                    url,
                    self.policy,
                    self.max_file_bytes,
                    f"LoRA files may be at most {_size_text(self.max_file_bytes)} (WAN_LORA_MAX_GB)",
                    write,
                    headers={"If-None-Match": etag, "Accept-Encoding": "identity"} if etag else {},
                    bodiless=(304,) if etag else (),
                )
            if answer.status == 304:
                temporary.unlink()
                return None
            check_safetensors(temporary, f"{field} ({shown})")
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        log.info("LoRA %s: %d bytes downloaded in %.1f s", shown, answer.size, time.monotonic() - started)
        return temporary, answer, digest.hexdigest()

    def _evict(self) -> None:
        """Least recently used entries out until the cache is within its bound; busy keys are skipped."""
        entries = []
        for path in self.cache_dir.glob(f"*{SAFETENSORS_SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # evicted by another worker meanwhile
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.cache_max_bytes:
                break
            key = path.name.removesuffix(SAFETENSORS_SUFFIX)
            with _locked(self.cache_dir / f"{key}.lock") as free:
                if not free:
                    continue
                path.unlink(missing_ok=True)
                (self.cache_dir / f"{key}.json").unlink(missing_ok=True)
            total -= size
            log.info("LoRA cache: evicted %s (%d bytes, least recently used)", path.name, size)
        self._sweep()

    def _sweep(self) -> None:
        """Remove what a killed worker left: downloads (and notes) idle for longer than any download may take,
        job link folders older than a day (a running download's file is written to all the time), and lock
        files as old as a download that nobody holds (a lock is made per URL and would pile up otherwise)."""
        now = time.time()
        stale_s = self.policy.total_timeout_s + STALE_SLACK_S
        leftovers = [
            (p, stale_s) for pattern in ("download-*.part", "*.json.part") for p in self.cache_dir.glob(pattern)
        ]
        leftovers += [(p, STALE_JOB_S) for p in (self.cache_dir / JOBS_FOLDER).glob("job-*")]
        leftovers += [(p, stale_s) for p in self.cache_dir.glob("*.lock")]
        for path, age in leftovers:
            try:
                if now - path.stat().st_mtime <= age:
                    continue
                if path.suffix == ".lock":
                    if not _remove_unheld_lock(path):
                        continue
                elif path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                log.info("LoRA cache: removed %s, left by a stopped worker", path.name)
            except FileNotFoundError:  # another worker removed it meanwhile
                continue


def _in_cache(real: Path, root: Path, cache: Path) -> bool:
    """Whether a resolved path lies in the download cache (when the cache sits inside the LoRA folder)."""
    return real.is_relative_to(cache) and not root.is_relative_to(cache)


def _listing(root: Path, cache: Path) -> list[str]:
    """The folder's .safetensors names, one level of subfolders deep, for a not-found message: only files
    that really lie in the folder (a symlinked subfolder leading out is not listed), none of the cache's."""
    names = []
    for path in (p for pattern in ("*", "*/*") for p in root.glob(pattern + SAFETENSORS_SUFFIX)):
        try:
            real = _resolved(path)
            if real.is_relative_to(root) and not _in_cache(real, root, cache) and real.is_file():
                names.append(str(path.relative_to(root)))
        except OSError:  # a symlink loop, a file gone meanwhile
            continue
    return sorted(names)


def _link(entry: Path, link: Path) -> None:
    """The job's own name for a cache entry: a hard link, or a copy where the filesystem has none."""
    try:
        os.link(entry, link)
    except OSError:
        shutil.copyfile(entry, link)


def _size_text(size: int) -> str:
    for unit, factor in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} bytes"


def _read_note(path: Path) -> dict | None:
    try:
        note = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # no note (or a broken one): the entry is fetched again
    if not isinstance(note, dict) or not isinstance(note.get("sha256"), str):
        return None
    size, etag = note.get("size"), note.get("etag")
    if not isinstance(size, int) or isinstance(size, bool) or not (etag is None or isinstance(etag, str)):
        return None  # a note written by hand or by another program: not trusted, the entry is fetched again
    return note


def _write_note(path: Path, note: dict) -> None:
    temporary = path.with_suffix(".json.part")
    try:
        temporary.write_text(json.dumps(note))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
