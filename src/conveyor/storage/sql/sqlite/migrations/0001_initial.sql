-- conveyor schema for SQLite, version 1.
-- Times are REAL seconds since the Unix epoch; JSON columns hold JSON text.

CREATE TABLE conveyor_tasks (
    id              TEXT PRIMARY KEY,
    action          TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'aborted')),
    priority        REAL NOT NULL DEFAULT 0,
    run_at          REAL NOT NULL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER,
    rescues         INTEGER NOT NULL DEFAULT 0,
    run_timeout     REAL,
    pickup_timeout  REAL,
    pickup_deadline REAL,           -- run_at + pickup_timeout while queued
    backoff         TEXT,
    worker          TEXT,
    lease_until     REAL,
    token           TEXT,           -- fencing token of the current claim
    abort_requested TEXT,
    progress        TEXT,
    result          TEXT,
    error           TEXT,
    errors          TEXT NOT NULL DEFAULT '[]',
    reason          TEXT,
    unique_key      TEXT,
    unique_scope    TEXT NOT NULL DEFAULT '|queued|running|',
    concurrency     TEXT,
    tags            TEXT NOT NULL DEFAULT '{}',
    parent_id       TEXT,
    public_url      TEXT,
    version         INTEGER NOT NULL DEFAULT 1,
    event           TEXT NOT NULL DEFAULT 'added',  -- what the last change was
    origin          TEXT                            -- which storage instance made it
);

-- The claim: ready tasks of one action by priority, then age.
CREATE INDEX conveyor_tasks_ready ON conveyor_tasks (action, priority, run_at, id)
    WHERE status = 'queued';
-- When the next delayed task is due.
CREATE INDEX conveyor_tasks_due ON conveyor_tasks (run_at) WHERE status = 'queued';
-- Tasks by status (and action): listings, stats, running tasks for the sweeper and limits.
CREATE INDEX conveyor_tasks_status ON conveyor_tasks (status, action);
-- Pickup timeouts.
CREATE INDEX conveyor_tasks_pickup ON conveyor_tasks (pickup_deadline)
    WHERE status = 'queued' AND pickup_deadline IS NOT NULL;
-- Dedupe: one task per unique key among the tasks whose status is in their own scope.
CREATE UNIQUE INDEX conveyor_tasks_unique ON conveyor_tasks (unique_key)
    WHERE unique_key IS NOT NULL AND instr(unique_scope, '|' || status || '|') > 0;
-- Retention.
CREATE INDEX conveyor_tasks_finished ON conveyor_tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX conveyor_tasks_parent ON conveyor_tasks (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE conveyor_logs (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id  TEXT NOT NULL,
    ts       REAL NOT NULL,
    level    INTEGER NOT NULL,
    message  TEXT NOT NULL,
    data     TEXT
);
CREATE INDEX conveyor_logs_task ON conveyor_logs (task_id, seq);

-- The change feed, in commit order. A row is one change of one task, or, when
-- `batch` is set, the same change (event, status) of many tasks written by one
-- statement: `batch` is a JSON array of [task_id, version] pairs. Every write
-- path inserts its rows explicitly (cheaper than a trigger per task row). Rows
-- are pruned from the oldest; the newest is never deleted, so seq never repeats.
CREATE TABLE conveyor_changes (
    seq      INTEGER PRIMARY KEY,
    task_id  TEXT,
    version  INTEGER,
    status   TEXT NOT NULL,
    event    TEXT NOT NULL,
    origin   TEXT,
    ts       REAL NOT NULL,
    batch    TEXT
);

CREATE TRIGGER conveyor_tasks_deleted AFTER DELETE ON conveyor_tasks
BEGIN
    INSERT INTO conveyor_changes (task_id, version, status, event, origin, ts)
    VALUES (OLD.id, OLD.version + 1, OLD.status, 'deleted', NULL, (julianday('now') - 2440587.5) * 86400.0);
END;

CREATE TABLE conveyor_workers (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    actions     TEXT NOT NULL,
    concurrency INTEGER NOT NULL,
    running     INTEGER NOT NULL DEFAULT 0,
    started_at  REAL NOT NULL,
    last_seen   REAL NOT NULL,
    info        TEXT NOT NULL DEFAULT '{}'
);
