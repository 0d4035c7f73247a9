"""The job ledger of a bulk run: one SQLite file (WAL) that survives a kill at any moment.

Each planned job is a row keyed by what it asks for. Its state moves
pending -> submitting -> submitted -> running -> completed | failed | cancelled, and each move is
committed before the next step, so a resumed run knows what was already sent and what was already
downloaded.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

STATES = ("pending", "submitting", "submitted", "running", "completed", "failed", "cancelled")
OPEN_STATES = ("pending", "submitting", "submitted", "running")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    image TEXT NOT NULL,
    prompt TEXT NOT NULL,
    fields TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    job_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    error TEXT,
    video_path TEXT,
    generation_time REAL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Row:
    key: str
    position: int
    image: str
    prompt: str
    fields: dict
    state: str
    job_id: str | None
    attempts: int
    output: dict | None
    error: str | None
    video_path: str | None
    generation_time: float | None

    def job_input(self) -> dict:
        return {**self.fields, "image": self.image, "prompt": self.prompt}


def job_key(image: str, prompt: str, fields: dict) -> str:
    spec = json.dumps({"image": image, "prompt": prompt, "fields": fields}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:24]


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def plan(self, jobs: list[tuple[str, str, dict]], settings: dict) -> None:
        """Record the planned jobs (image, prompt, fields) and the run's settings, once."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for position, (image, prompt, fields) in enumerate(jobs):
                self.db.execute(
                    "INSERT OR IGNORE INTO jobs (key, position, image, prompt, fields, updated_at) VALUES (?,?,?,?,?,?)",
                    (job_key(image, prompt, fields), position, image, prompt, json.dumps(fields, sort_keys=True), now),
                )
            self.db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('settings', ?)",
                (json.dumps(settings, sort_keys=True),),
            )

    def settings(self) -> dict | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        return json.loads(row[0]) if row else None

    def rows(self, states: tuple[str, ...] = STATES) -> list[Row]:
        return self._select(f"state IN ({','.join('?' * len(states))})", states)

    def row(self, key: str) -> Row:
        """One job as the file holds it now (another process may have moved it on)."""
        (found,) = self._select("key = ?", (key,))
        return found

    def _select(self, where: str, params: tuple) -> list[Row]:
        cursor = self.db.execute(
            "SELECT key, position, image, prompt, fields, state, job_id, attempts, output, error, video_path, "
            f"generation_time FROM jobs WHERE {where} ORDER BY position",
            params,
        )
        return [
            Row(k, pos, img, pr, json.loads(f), st, jid, att, json.loads(out) if out else None, err, vp, gt)
            for k, pos, img, pr, f, st, jid, att, out, err, vp, gt in cursor
        ]

    def update(self, key: str, **changes) -> None:
        if "state" in changes and changes["state"] not in STATES:
            raise ValueError(f"unknown state {changes['state']!r}")
        if "output" in changes and changes["output"] is not None:
            changes["output"] = json.dumps(changes["output"])
        changes["updated_at"] = time.time()
        columns = ", ".join(f"{name} = ?" for name in changes)
        with self.db:
            self.db.execute(f"UPDATE jobs SET {columns} WHERE key = ?", (*changes.values(), key))

    def counts(self) -> dict[str, int]:
        found = dict(self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {state: found.get(state, 0) for state in STATES}
