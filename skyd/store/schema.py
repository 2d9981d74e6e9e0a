"""The schema, as the migrations that build it: migration N takes a database from
`PRAGMA user_version` N-1 to N. Only ever append; a released migration never changes."""

from __future__ import annotations

from typing import Iterable

from skyd.protocol import MANAGED_STEPS, JobStatus, Status


def sql_list(values: Iterable[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# The status lists of the partial indexes below, exactly as written there (same order), so
# that a query naming them can use the index (tests/test_store.py checks both).
ACTIVE_REQUESTS = sql_list((Status.PENDING, Status.RUNNING))
FINISHED_JOBS = sql_list((JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.FAILED_SETUP,
                          JobStatus.CANCELLED))
ACTIVE_MANAGED = sql_list(MANAGED_STEPS)

MIGRATIONS: list[str] = [
    # v1: requests, clusters, jobs
    """
    CREATE TABLE requests (
        seq         INTEGER PRIMARY KEY,       -- arrival order
        id          TEXT NOT NULL UNIQUE,      -- uuid4, never reused
        name        TEXT NOT NULL,
        queue       TEXT NOT NULL,
        status      TEXT NOT NULL,
        uid         INTEGER NOT NULL,
        user        TEXT NOT NULL,
        cluster     TEXT,
        op          BLOB NOT NULL,             -- msgpack of the Op
        created_at  REAL NOT NULL,
        started_at  REAL,
        finished_at REAL,
        result      BLOB,
        error       TEXT
    );
    CREATE INDEX requests_active ON requests(status) WHERE status IN ('pending', 'running');
    CREATE INDEX requests_finished ON requests(finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX requests_by_user ON requests(uid, seq);
    CREATE TABLE clusters (
        name          TEXT PRIMARY KEY,
        status        TEXT NOT NULL,
        infra         TEXT NOT NULL,
        num_nodes     INTEGER NOT NULL,
        uid           INTEGER NOT NULL,
        user          TEXT NOT NULL,
        launched_at   REAL NOT NULL,
        last_use      REAL NOT NULL,
        resources     TEXT NOT NULL DEFAULT '',
        nodes         BLOB,
        status_reason TEXT NOT NULL DEFAULT '',
        next_job_id   INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE jobs (
        cluster      TEXT NOT NULL,
        job_id       INTEGER NOT NULL,
        name         TEXT NOT NULL,
        status       TEXT NOT NULL,
        uid          INTEGER NOT NULL,
        user         TEXT NOT NULL,
        submitted_at REAL NOT NULL,
        started_at   REAL,
        ended_at     REAL,
        exit_code    INTEGER,
        request_id   TEXT,
        handle       BLOB,                     -- infra-specific: pids, log paths
        PRIMARY KEY (cluster, job_id)
    );
    CREATE INDEX jobs_active ON jobs(status)
        WHERE status NOT IN ('SUCCEEDED', 'FAILED', 'FAILED_SETUP', 'CANCELLED');
    """,
    # v2: autostop
    """
    ALTER TABLE clusters ADD COLUMN autostop REAL NOT NULL DEFAULT -1;
    ALTER TABLE clusters ADD COLUMN autostop_down INTEGER NOT NULL DEFAULT 0;
    """,
    # v3: managed jobs
    """
    CREATE TABLE managed_jobs (
        job_id      INTEGER PRIMARY KEY,       -- assigned by the daemon, in arrival order
        status      TEXT NOT NULL,
        uid         INTEGER NOT NULL,
        user        TEXT NOT NULL,
        teardown    INTEGER NOT NULL DEFAULT 0, -- its cluster still has to be torn down
        task        BLOB NOT NULL,             -- msgpack of the Task
        record      BLOB NOT NULL              -- msgpack of the ManagedJobRecord
    );
    CREATE INDEX managed_jobs_unfinished ON managed_jobs(job_id)
        WHERE status IN ('PENDING', 'STARTING', 'RUNNING', 'RECOVERING', 'CANCELLING')
           OR teardown = 1;
    CREATE INDEX managed_jobs_by_user ON managed_jobs(uid, job_id);
    """,
    # v4: the host ledger: what each cluster's nodes hold of their hosts, and the hosts'
    # detected GPUs (kept across restarts: a host that does not answer keeps its last ones)
    """
    ALTER TABLE clusters ADD COLUMN held BLOB;
    CREATE TABLE hosts (
        key          TEXT PRIMARY KEY,         -- "local", or ip:port of a pool's host
        cpus         REAL NOT NULL DEFAULT 0,
        memory_bytes INTEGER NOT NULL DEFAULT 0,
        gpus         BLOB,                     -- msgpack list of detected GPUs
        error        TEXT NOT NULL DEFAULT '', -- the last detection failed: why
        probed_at    REAL NOT NULL DEFAULT 0
    );
    """,
    # v5: idempotency keys of submissions (a retry answers the first attempt's request)
    """
    CREATE TABLE submission_keys (
        uid        INTEGER NOT NULL,           -- keys are the caller's own
        key        TEXT NOT NULL,
        request_id TEXT NOT NULL REFERENCES requests(id) ON DELETE CASCADE,
        op         TEXT NOT NULL,              -- a key reused for another op is refused
        created_at REAL NOT NULL,
        PRIMARY KEY (uid, key)
    );
    CREATE INDEX submission_keys_by_request ON submission_keys(request_id);
    """,
    # v6: an acknowledged cancel of a running request, durable before it is answered
    """
    ALTER TABLE requests ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    """,
]


def statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
