"""The playground's history: every job it sent, in one SQLite file, with its files beside it.

    DATA/history.sqlite     one row per job: input, status, output, error, times
    DATA/jobs/ID/image      the input image as sent (when it was a file, not a URL)
    DATA/jobs/ID/video.mp4  the finished video, fetched once
    DATA/jobs/ID/poster.png a frame of it, captured by the page

Rows are written by the request threads of the playground's server; one lock keeps them in order.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ...files import written_whole

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
_JSON_COLUMNS = ("input", "progress", "output", "error")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    image_type TEXT,
    progress TEXT,
    output TEXT,
    error TEXT,
    video_source TEXT
)
"""
_ADDED_COLUMNS = {"video_source": "TEXT"}  # columns a history written by an earlier version lacks


class UnknownJob(KeyError):
    """A job id that cannot name a job's folder (empty, a path, . or ..)."""


class History:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        (self.folder / "jobs").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.folder / "history.sqlite", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        have = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def files(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or "\\" in job_id or job_id in (".", ".."):
            raise UnknownJob(job_id)
        return self.folder / "jobs" / job_id

    def add(self, job_id: str, endpoint: str, job_input: dict, image: bytes | None, image_type: str | None) -> None:
        folder = self.files(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        if image is not None:
            with written_whole(folder / "image") as tmp:
                Path(tmp).write_bytes(image)
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, endpoint, submitted_at, status, input, image_type) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, endpoint, time.time(), "IN_QUEUE", json.dumps(job_input), image_type),
            )

    def update(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        values = [json.dumps(v) if k in _JSON_COLUMNS and v is not None else v for k, v in fields.items()]
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values, job_id))  # noqa: S608 (names are ours)

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._record(row) if row is not None else None

    def all(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY submitted_at DESC").fetchall()
        return [self._record(row) for row in rows]

    def image(self, job_id: str) -> tuple[bytes, str] | None:
        record, path = self.get(job_id), self.files(job_id) / "image"
        if record is None or not path.is_file():
            return None
        return path.read_bytes(), record["image_type"] or "application/octet-stream"

    def video_path(self, job_id: str) -> Path:
        return self.files(job_id) / "video.mp4"

    def poster_path(self, job_id: str) -> Path:
        return self.files(job_id) / "poster.png"

    def _record(self, row: sqlite3.Row) -> dict:
        record = dict(row)
        for name in _JSON_COLUMNS:
            record[name] = json.loads(record[name]) if record[name] is not None else None
        return record
