"""The job ledger of a bulk run: one SQLite file (WAL) that survives a kill at any moment.

Each planned job is a row keyed by what it asks for. Its state moves
pending -> submitting -> submitted -> running -> completed | failed | cancelled, and each move is
committed before the next step, so a resumed run knows what was already sent and what was already
downloaded.

The file carries its schema version in `PRAGMA user_version`. Opening a ledger upgrades an older one
in place (a version 0 ledger is what wan-i2v wrote before versions were kept); a ledger newer than
this code is refused rather than half-understood.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Self

STATES = ("pending", "submitting", "submitted", "running", "completed", "failed", "cancelled")
OPEN_STATES = ("pending", "submitting", "submitted", "running")

# Version 0: the tables below without `jobs.status`.
SCHEMA_V0 = """
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
# MIGRATIONS[n] moves a version n ledger to version n + 1.
MIGRATIONS = [
    # 0 -> 1: the job's last status on the endpoint (FAILED, TIMED_OUT, ...), which `state` folds together.
    "ALTER TABLE jobs ADD COLUMN status TEXT",
]
SCHEMA_VERSION = len(MIGRATIONS)


class LedgerError(ValueError):
    """The file is not a ledger this wan-i2v can use."""


class LedgerVersionError(LedgerError):
    """The ledger was written by a newer wan-i2v than this one."""


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
    status: str | None = None  # the job's last status on the endpoint

    def job_input(self) -> dict:
        return {**self.fields, "image": self.image, "prompt": self.prompt}


COLUMNS = (
    "key, position, image, prompt, fields, state, job_id, attempts, output, error, video_path, generation_time, status"
)


def job_key(image: str, prompt: str, fields: dict, repeat: int = 0) -> str:
    """The row key of a job; `repeat` tells apart the 2nd, 3rd, ... copy of the same job in one plan."""
    spec = {"image": image, "prompt": prompt, "fields": fields}
    if repeat:
        spec["repeat"] = repeat
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.OperationalError as exc:  # locked, unreadable: the file may well be a ledger
            self.db.close()
            raise LedgerError(f"{self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise LedgerError(f"{self.path} is not a wan-i2v ledger: {exc}") from None
        except BaseException:
            self.db.close()
            raise

    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION, in one transaction (another process may be opening it too)."""
        if self._checked_version() == SCHEMA_VERSION:
            return  # the usual case: no write lock taken
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            found = self._checked_version()  # again, now that no one else can change it
            if found == SCHEMA_VERSION:
                return
            for statement in filter(None, (part.strip() for part in SCHEMA_V0.split(";"))):
                self.db.execute(statement)  # a new file starts as version 0, then migrates like any other
            for migration in MIGRATIONS[found:]:
                self.db.execute(migration)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _checked_version(self) -> int:
        found = self.version()
        if found > SCHEMA_VERSION:
            raise LedgerVersionError(
                f"{self.path} is a version {found} ledger, and this wan-i2v reads versions up to "
                f"{SCHEMA_VERSION}: upgrade wan-i2v to use it"
            )
        return found

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def plan(self, jobs: list[tuple[str, str, dict]], settings: dict) -> None:
        """Record the planned jobs (image, prompt, fields) in order, and the run's settings, once.

        A job listed twice is two rows: it is run twice (with a random seed, two different videos)."""
        now, seen = time.time(), Counter()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for position, (image, prompt, fields) in enumerate(jobs):
                spec = json.dumps([image, prompt, fields], sort_keys=True)
                key = job_key(image, prompt, fields, seen[spec])
                seen[spec] += 1
                self.db.execute(
                    "INSERT OR IGNORE INTO jobs (key, position, image, prompt, fields, updated_at) "
                    "VALUES (?,?,?,?,?,?)",
                    (key, position, image, prompt, json.dumps(fields, sort_keys=True), now),
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
        cursor = self.db.execute(f"SELECT {COLUMNS} FROM jobs WHERE {where} ORDER BY position", params)
        return [
            Row(k, pos, img, pr, json.loads(f), st, jid, att, json.loads(out) if out else None, err, vp, gt, status)
            for k, pos, img, pr, f, st, jid, att, out, err, vp, gt, status in cursor
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
