"""Prepared experts kept on disk: a cold start that finds them reads them instead of preparing them again.

Preparing an expert means reading its bf16 weights, fusing the default mode's turbo pair and quantising
(fp8 or int8): for fp8 experts the result is about half the bytes of what was read. The first cold start
writes both experts as it left them to `WAN_PREPARED_CACHE/<fingerprint>/`; the next one with the same
fingerprint builds each expert's structure from its config (quantising zeros: nothing is read for that)
and streams the saved tensors into it, straight to the device.

The fingerprint covers everything that shaped the tensors: the weight files (content-addressed blob names
in a Hugging Face cache, else size and modification time) and their provenance, the fused turbo pair's
SHA-256, the default mode, the quantisation, the compute dtype and device type, and the torch, torchao and
diffusers versions. A different fingerprint is never served: it is rebuilt (and reported as `stale (why)`).
An entry is written under a temporary name and renamed when whole, so a worker killed mid-write leaves
nothing that is read later; entries are checked from their headers before use; the least recently used
beyond `WAN_PREPARED_CACHE_KEEP` are removed. A full or read-only disk is a warning, never a failed start.

Files are plain safetensors (our writer streams one tensor at a time, so host memory holds one tensor, not
an expert); a quantised weight is stored as its inner tensors (`blocks.0.attn1.to_q.weight:qdata`, `:scale`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from .memory import module_leaves
from .safetensors_layout import LayoutError, check_layout

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
PARTIAL_PREFIX = ".partial-"
ABANDONED_AFTER_S = 3600  # a partial entry untouched this long was left by a killed worker
FREE_MARGIN_BYTES = 1 << 30  # keep this much free beyond what an entry needs
GB = 1e9
SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int8: "I8", torch.uint8: "U8",
    torch.int16: "I16", torch.int32: "I32", torch.int64: "I64", torch.bool: "BOOL",
}  # fmt: skip


def weights_identity(folder: Path) -> list[list]:
    """What identifies the weight files of one component folder without reading them: a file in a Hugging Face
    cache is a link to a blob named by its content hash; any other file counts by size and modification time."""
    files = []
    for path in sorted(folder.glob("*.safetensors*")):
        real = path.resolve()
        stat = real.stat()
        content = real.name if real.parent.name == "blobs" else f"mtime {stat.st_mtime_ns}"
        files.append([path.name, stat.st_size, content])
    return files


def package_versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "torchao", "diffusers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


@dataclass
class PreparedCache:
    """One worker's view of the cache: where it is, the fingerprint it wants, and what became of it."""

    root: Path | None  # None: off
    inputs: dict = field(default_factory=dict)  # what shaped the experts; the fingerprint is their hash
    keep: int = 2
    state: str = "off"  # off | hit | miss | stale
    why: str = ""  # what made it stale
    written_bytes: int | None = None
    not_written: str | None = None

    def report(self) -> str:
        """The cold-start report's `prepared_cache`: off, hit, miss (written N GB), stale (why; written N GB)."""
        notes = [self.why] if self.why else []
        if self.written_bytes is not None:
            notes.append(f"written {_size(self.written_bytes)}")
        if self.not_written is not None:
            notes.append(f"not written: {self.not_written}")
        return f"{self.state} ({'; '.join(notes)})" if notes else self.state

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.inputs, sort_keys=True).encode()).hexdigest()[:24]

    @property
    def entry(self) -> Path:
        assert self.root is not None
        return self.root / self.fingerprint

    def file(self, side: str) -> Path:
        return self.entry / f"{side}.safetensors"

    # ---- reading -------------------------------------------------------------------------------------
    def lookup(self, sides: tuple[str, ...]) -> bool:
        """Whether a whole entry for this fingerprint is there; sets `state` to hit, miss or stale (why)."""
        if self.root is None:
            self.state = "off"
            return False
        if not self.entry.is_dir():
            self.state, self.why = self._stale_or_miss()
            return False
        problem = self._check_entry(sides)
        if problem is None:
            self.state = "hit"
            _touch(self.entry / MANIFEST)  # least recently used goes first
            return True
        log.warning("prepared cache %s: %s; rebuilding it", self.entry, problem)
        self.drop(problem)
        return False

    def drop(self, why: str) -> None:
        """Remove this fingerprint's entry, which cannot be served (the report says why)."""
        shutil.rmtree(self.entry, ignore_errors=True)
        self.state, self.why = "stale", why

    def _check_entry(self, sides: tuple[str, ...]) -> str | None:
        try:
            manifest = json.loads((self.entry / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            return f"{MANIFEST} unreadable ({exc})"
        if manifest.get("inputs") != self.inputs:
            return f"{MANIFEST} does not describe this fingerprint"
        for side in sides:
            try:
                header = check_layout(self.file(side))
            except (OSError, LayoutError) as exc:
                return f"{self.file(side).name}: {exc}"
            if len(header) - ("__metadata__" in header) != manifest.get("tensors", {}).get(side):
                return f"{self.file(side).name}: not the {manifest.get('tensors', {}).get(side)} tensors recorded"
        return None

    def _stale_or_miss(self) -> tuple[str, str]:
        """("stale", what changed) when an entry of other settings is there, else ("miss", "")."""
        for _, manifest in self._whole_entries():  # the most recently used first
            try:
                inputs = json.loads(manifest.read_text()).get("inputs", {})
            except (OSError, ValueError):
                continue
            changed = [
                f"{key} {_short(inputs.get(key))} -> {_short(self.inputs.get(key))}"
                for key in sorted({*inputs, *self.inputs})
                if inputs.get(key) != self.inputs.get(key)
            ]
            return "stale", "; ".join(changed)
        return "miss", ""

    def _whole_entries(self) -> list[tuple[float, Path]]:
        """(last used, manifest) of every whole entry, the most recently used first; partial ones are not entries."""
        found = []
        for manifest in self.root.glob(f"*/{MANIFEST}") if self.root.is_dir() else ():
            if not manifest.parent.name.startswith(PARTIAL_PREFIX):
                try:
                    found.append((manifest.stat().st_mtime, manifest))
                except OSError:
                    continue
        return sorted(found, reverse=True)

    @torch.no_grad()
    def restore(self, side: str, expert: torch.nn.Module) -> None:
        """Stream the saved tensors of `side` into `expert`, whose structure (dtypes, quantised layout) was built
        as the first cold start left it. ValueError when they do not fit (the caller rebuilds)."""
        leaves = module_leaves(expert)
        path = self.file(side)
        header = check_layout(path)
        names = sorted(name for name in header if name != "__metadata__")
        if set(names) != set(leaves):
            extra, missing = sorted(set(names) - set(leaves))[:3], sorted(set(leaves) - set(names))[:3]
            raise ValueError(f"{path.name} does not fit the expert (extra {extra}, missing {missing})")
        with path.open("rb", buffering=0) as file:
            for name in sorted(names, key=lambda n: header[n]["data_offsets"][0]):
                info, leaf = header[name], leaves[name]
                if info["dtype"] != SAFETENSORS_DTYPES.get(leaf.dtype) or list(leaf.shape) != info["shape"]:
                    raise ValueError(f"{path.name}: {name} is {info['dtype']} {info['shape']}, the expert's "
                                     f"{leaf.dtype} {list(leaf.shape)}")  # fmt: skip
                begin, end = info["data_offsets"]
                raw = torch.empty(end - begin, dtype=torch.uint8)
                file.seek(begin)
                if file.readinto(raw.numpy()) != end - begin:
                    raise ValueError(f"{path.name}: {name} is cut short")
                leaf.copy_(raw.view(leaf.dtype).view(leaf.shape))

    # ---- writing -------------------------------------------------------------------------------------
    def writer(self, expected_bytes: int) -> EntryWriter | None:
        """A writer for this fingerprint's entry, or None (with a warning, and `state` saying why) when the
        cache cannot take it: no room, or a folder that cannot be written."""
        if self.root is None:
            return None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._sweep_abandoned()
            free = shutil.disk_usage(self.root).free
            if free < expected_bytes + FREE_MARGIN_BYTES:
                raise OSError(f"{free / GB:.1f} GB free, {expected_bytes / GB:.1f} GB needed")
            partial = self.root / f"{PARTIAL_PREFIX}{self.fingerprint}-{secrets.token_hex(4)}"
            partial.mkdir()
        except OSError as exc:
            self._not_written(exc)
            return None
        return EntryWriter(self, partial)

    def _not_written(self, exc: BaseException) -> None:
        log.warning("prepared cache %s: not written (%s); the worker serves all the same", self.root, exc)
        self.not_written = str(exc)

    def _sweep_abandoned(self) -> None:
        now = time.time()
        for partial in self.root.glob(f"{PARTIAL_PREFIX}*"):
            try:
                newest = max([p.stat().st_mtime for p in partial.rglob("*")] + [partial.stat().st_mtime])
            except OSError:
                continue
            if now - newest > ABANDONED_AFTER_S:
                shutil.rmtree(partial, ignore_errors=True)

    def evict(self) -> list[str]:
        """Remove whole entries beyond `keep`, least recently used first; returns their fingerprints."""
        removed = []
        for _, manifest in self._whole_entries()[self.keep :]:
            shutil.rmtree(manifest.parent, ignore_errors=True)
            removed.append(manifest.parent.name)
        return removed


class EntryWriter:
    """Writes one entry under a temporary name; `commit` renames it into place when both experts are in."""

    def __init__(self, cache: PreparedCache, partial: Path):
        self.cache, self.partial = cache, partial
        self.tensors: dict[str, int] = {}
        self.bytes = 0
        self.failed = False

    def add(self, side: str, expert: torch.nn.Module) -> None:
        if self.failed:
            return
        try:
            path = self.partial / f"{side}.safetensors"
            count, size = write_safetensors(path, module_leaves(expert), {"fingerprint": self.cache.fingerprint})
            self.tensors[side], self.bytes = count, self.bytes + size
        except OSError as exc:
            self._fail(exc)

    def commit(self) -> None:
        if self.failed:
            return
        try:
            manifest = {"format": FORMAT, "inputs": self.cache.inputs, "tensors": self.tensors, "bytes": self.bytes}
            (self.partial / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            _fsync_dir(self.partial)
            if self.cache.entry.exists():  # another worker finished the same entry first: keep theirs
                shutil.rmtree(self.partial, ignore_errors=True)
            else:
                os.replace(self.partial, self.cache.entry)
                _fsync_dir(self.cache.root)
        except OSError as exc:
            self._fail(exc)
            return
        self.cache.written_bytes = self.bytes
        removed = self.cache.evict()
        if removed:
            log.info("prepared cache: removed %d older entr%s", len(removed), "y" if len(removed) == 1 else "ies")

    def abandon(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)

    def cancel(self, why: str) -> None:
        """Write nothing after all (what was prepared is not what the fingerprint says)."""
        self._fail(RuntimeError(why))

    def _fail(self, exc: BaseException) -> None:
        self.failed = True
        self.abandon()
        self.cache._not_written(exc)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[int, int]:
    """Write `tensors` as one safetensors file, one tensor at a time (a device tensor is copied to the host alone);
    returns (tensor count, bytes written). The file is synced before this returns."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with path.open("wb") as file:
        file.write(len(raw).to_bytes(8, "little"))
        file.write(raw)
        for t in tensors.values():
            host = t.detach().to("cpu").contiguous().reshape(-1)
            file.write(host.view(torch.uint8).numpy())
        file.flush()
        os.fsync(file.fileno())
    return len(tensors), 8 + len(raw) + offset


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only volume: the entry is still served


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _size(count: int) -> str:
    return f"{count / GB:.2f} GB" if count >= GB / 100 else f"{count / 1e6:.2f} MB"
