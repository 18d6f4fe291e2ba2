-- conveyor schema for PostgreSQL, version 1.
--
-- Every object lives in one schema: {schema} stands for its quoted name and
-- {channel} for the NOTIFY channel (a string literal), both filled in when the
-- migration is applied. Times are double precision seconds since the Unix
-- epoch (the model's floats, stored exactly); JSON columns are jsonb.
-- Text compared or sorted by the query language is COLLATE "C" (code point order).

CREATE TABLE {schema}.tasks (
    id              text COLLATE "C" PRIMARY KEY,
    action          text COLLATE "C" NOT NULL,
    payload         jsonb NOT NULL,
    status          text COLLATE "C" NOT NULL
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'aborted')),
    priority        double precision NOT NULL DEFAULT 0,
    run_at          double precision NOT NULL,
    created_at      double precision NOT NULL,
    updated_at      double precision NOT NULL,
    started_at      double precision,
    finished_at     double precision,
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer,
    rescues         integer NOT NULL DEFAULT 0,
    run_timeout     double precision,
    pickup_timeout  double precision,
    pickup_deadline double precision,          -- run_at + pickup_timeout while queued
    backoff         jsonb,
    worker          text COLLATE "C",
    lease_until     double precision,
    token           text COLLATE "C",          -- fencing token of the current claim
    abort_requested text COLLATE "C",
    progress        jsonb,
    result          jsonb,
    error           jsonb,
    errors          jsonb NOT NULL DEFAULT '[]',
    reason          text COLLATE "C",
    unique_key      text COLLATE "C",
    unique_scope    text COLLATE "C" NOT NULL DEFAULT '|queued|running|',
    concurrency     jsonb,
    tags            jsonb NOT NULL DEFAULT '{}',
    parent_id       text COLLATE "C",
    public_url      text,
    version         integer NOT NULL DEFAULT 1,
    event           text NOT NULL DEFAULT 'added',  -- what the last change was
    origin          text                            -- which storage instance made it
) WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

-- The claim: ready tasks of one action by priority, then age. Only queued rows
-- are in it, so its size follows the queue, not the history.
CREATE INDEX tasks_ready ON {schema}.tasks (action, priority, run_at, id)
    WHERE status = 'queued';
-- When the next delayed task of an action is due.
CREATE INDEX tasks_due ON {schema}.tasks (action, run_at) WHERE status = 'queued';
-- Tasks by status (and action): stats, running tasks for limits, conditions and the sweeper.
CREATE INDEX tasks_status ON {schema}.tasks (status, action);
-- Pickup timeouts.
CREATE INDEX tasks_pickup ON {schema}.tasks (pickup_deadline)
    WHERE status = 'queued' AND pickup_deadline IS NOT NULL;
-- Dedupe: one task per unique key among the tasks whose status is in their own scope.
CREATE UNIQUE INDEX tasks_unique ON {schema}.tasks (unique_key)
    WHERE unique_key IS NOT NULL AND strpos(unique_scope, '|' || status || '|') > 0;
-- Looking up a key in other scopes (a spec may count finished tasks as duplicates).
CREATE INDEX tasks_key ON {schema}.tasks (unique_key) WHERE unique_key IS NOT NULL;
-- Retention and listings.
CREATE INDEX tasks_finished ON {schema}.tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX tasks_parent ON {schema}.tasks (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE {schema}.logs (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id  text COLLATE "C" NOT NULL,
    ts       double precision NOT NULL,
    level    integer NOT NULL,
    message  text NOT NULL,
    data     jsonb
);
CREATE INDEX logs_task ON {schema}.logs (task_id, seq);

-- The change feed: one row per change of a task. ``xid`` is the writing
-- transaction: readers use it with snapshots to see each committed row exactly
-- once, whatever the order in which transactions commit (see docs/postgres.md).
CREATE TABLE {schema}.changes (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid      xid8 NOT NULL DEFAULT pg_current_xact_id(),
    task_id  text COLLATE "C" NOT NULL,
    version  integer NOT NULL,
    status   text NOT NULL,
    event    text NOT NULL,
    origin   text,
    ts       double precision NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
CREATE INDEX changes_xid ON {schema}.changes (xid);

CREATE TABLE {schema}.workers (
    id          text COLLATE "C" PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    actions     jsonb NOT NULL,
    concurrency integer NOT NULL,
    running     integer NOT NULL DEFAULT 0,
    started_at  double precision NOT NULL,
    last_seen   double precision NOT NULL,
    info        jsonb NOT NULL DEFAULT '{}'
);

-- Change-feed triggers: statement-level with transition tables, so a batch of
-- a thousand tasks costs one INSERT ... SELECT, not a thousand trigger calls.

CREATE FUNCTION {schema}.tasks_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.changes (task_id, version, status, event, origin, ts)
    SELECT id, version, status, event, origin, updated_at FROM new_rows;
    RETURN NULL;
END
$$;

CREATE FUNCTION {schema}.tasks_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- only changes that bump the version (a heartbeat moving lease_until is not one)
    INSERT INTO {schema}.changes (task_id, version, status, event, origin, ts)
    SELECT n.id, n.version, n.status, n.event, n.origin, n.updated_at
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.version <> o.version;
    RETURN NULL;
END
$$;

CREATE FUNCTION {schema}.tasks_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.changes (task_id, version, status, event, origin, ts)
    SELECT id, version + 1, status, 'deleted',
           nullif(current_setting('conveyor.origin', true), ''),
           extract(epoch FROM clock_timestamp())::double precision
    FROM old_rows;
    RETURN NULL;
END
$$;

-- One notification per statement that wrote changes; the payload is the writer's
-- origin, so a listener that only wants other processes' changes can skip its own.
CREATE FUNCTION {schema}.changes_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    o text;
BEGIN
    SELECT coalesce(origin, '') INTO o FROM new_rows LIMIT 1;
    IF FOUND THEN
        PERFORM pg_notify(TG_ARGV[0], o);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_inserted AFTER INSERT ON {schema}.tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION {schema}.tasks_inserted();
CREATE TRIGGER tasks_updated AFTER UPDATE ON {schema}.tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION {schema}.tasks_updated();
CREATE TRIGGER tasks_deleted AFTER DELETE ON {schema}.tasks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION {schema}.tasks_deleted();
CREATE TRIGGER changes_notify AFTER INSERT ON {schema}.changes
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION {schema}.changes_notify({channel});
