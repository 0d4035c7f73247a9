"""The batch ledger on its own: job states, what another process reads back, schema version and migration."""

import sqlite3

import pytest
from helpers import ledger_states

from wan_i2v.ops.ledger import OPEN_STATES, SCHEMA_VERSION, Ledger, LedgerError, LedgerVersionError, job_key

JOBS = [("/a.png", "waves", {"seed": 1}), ("/b.png", "waves", {"seed": 1}), ("/a.png", "birds", {})]

# The tables exactly as wan-i2v wrote them before ledgers carried a version (user_version 0).
VERSION_0_TABLES = """
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


def write_version_0_ledger(path):
    db = sqlite3.connect(path)
    db.executescript(VERSION_0_TABLES)
    db.execute(
        "INSERT INTO jobs (key, position, image, prompt, fields, state, job_id, attempts, output, generation_time,"
        " updated_at) VALUES (?, 0, '/a.png', 'waves', '{}', 'completed', 'job-1', 1, '{\"seed\": 7}', 12.5, 0)",
        (job_key("/a.png", "waves", {}),),
    )
    db.execute(
        "INSERT INTO jobs (key, position, image, prompt, fields, updated_at) VALUES ('k2', 1, '/b.png', 'x', '{}', 0)"
    )
    db.execute("""INSERT INTO meta (key, value) VALUES ('settings', '{"download": "/videos"}')""")
    db.commit()
    db.close()


def test_jobs_move_through_their_states_and_every_move_is_committed(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.plan(JOBS, {"download": None})
        rows = ledger.rows()
        assert [(r.position, r.image, r.prompt, r.state, r.attempts) for r in rows] == [
            (0, "/a.png", "waves", "pending", 0),
            (1, "/b.png", "waves", "pending", 0),
            (2, "/a.png", "birds", "pending", 0),
        ]
        assert rows[0].job_input() == {"seed": 1, "image": "/a.png", "prompt": "waves"}
        first = rows[0].key
        ledger.update(first, state="submitting", attempts=1)
        # Another process (a helper, a resumed run, a test) sees each move at once.
        assert ledger_states(path) == ["submitting", "pending", "pending"]
        with Ledger(path) as other:
            other.update(first, state="submitted", job_id="job-1")
        assert ledger.row(first).job_id == "job-1" and ledger.row(first).state == "submitted"
        ledger.update(first, state="completed", output={"seed": 3}, generation_time=2.5, status="COMPLETED")
        ledger.update(rows[1].key, state="failed", error="boom", status="TIMED_OUT")
        assert [r.key for r in ledger.rows(OPEN_STATES)] == [rows[2].key]
        done = ledger.row(first)
        assert done.output == {"seed": 3} and done.generation_time == 2.5 and done.status == "COMPLETED"
        assert ledger.counts() == {
            "pending": 1,
            "submitting": 0,
            "submitted": 0,
            "running": 0,
            "completed": 1,
            "failed": 1,
            "cancelled": 0,
        }
        with pytest.raises(ValueError, match="unknown state 'lost'"):
            ledger.update(first, state="lost")
        assert ledger.settings() == {"download": None}


def test_planning_again_keeps_what_was_recorded(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.plan(JOBS, {"download": "/v"})
        ledger.update(ledger.rows()[0].key, state="completed")
        ledger.plan(JOBS, {"download": "/v"})
        assert [r.state for r in ledger.rows()] == ["completed", "pending", "pending"]


def test_a_job_listed_twice_is_two_jobs(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.plan([JOBS[0], JOBS[0], JOBS[1]], {})
        rows = ledger.rows()
        assert [r.position for r in rows] == [0, 1, 2] and len({r.key for r in rows}) == 3
        assert rows[0].key == job_key(*JOBS[0])  # the first copy keeps the key it always had


def test_a_ledger_from_before_versions_is_upgraded_once_and_keeps_its_jobs(tmp_path):
    path = tmp_path / "old.sqlite"
    write_version_0_ledger(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    with Ledger(path) as ledger:
        assert ledger.version() == SCHEMA_VERSION == 1
        done, waiting = ledger.rows()
        assert (done.state, done.job_id, done.output, done.generation_time, done.status) == (
            "completed",
            "job-1",
            {"seed": 7},
            12.5,
            None,
        )
        assert waiting.state == "pending" and ledger.settings() == {"download": "/videos"}
        ledger.update(waiting.key, state="failed", status="FAILED")  # the new column is there
    for _ in range(2):  # opening it again migrates nothing
        with Ledger(path) as ledger:
            assert ledger.version() == 1 and [r.status for r in ledger.rows()] == [None, "FAILED"]
    with sqlite3.connect(path) as db:
        columns = [name for _, name, *_ in db.execute("PRAGMA table_info(jobs)")]
    assert columns.count("status") == 1


def test_a_new_ledger_is_written_at_the_current_version(tmp_path):
    with Ledger(tmp_path / "new.sqlite") as ledger:
        assert ledger.version() == SCHEMA_VERSION and ledger.rows() == []


def test_a_ledger_from_a_newer_wan_i2v_is_refused_by_name_and_versions(tmp_path):
    path = tmp_path / "future.sqlite"
    with Ledger(path) as ledger:
        ledger.plan(JOBS, {})
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerVersionError) as refused:
        Ledger(path)
    message = str(refused.value)
    assert str(path) in message and f"version {SCHEMA_VERSION + 1} ledger" in message
    assert f"reads versions up to {SCHEMA_VERSION}" in message
    assert isinstance(refused.value, ValueError)  # the command prints it as a usage error, exit 2
    with sqlite3.connect(path) as db:  # and left it as it was
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_a_file_that_is_not_a_ledger_is_refused_by_name(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("not a database " * 100)
    with pytest.raises(LedgerError, match="notes.sqlite is not a wan-i2v ledger"):
        Ledger(path)
