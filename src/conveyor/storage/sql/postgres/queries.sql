-- Named queries of the PostgreSQL backend, psycopg %(name)s parameters.
-- {schema} is replaced by the quoted schema name when the storage is created.
-- Lists travel as one array or one jsonb parameter, so every statement is one
-- round trip whatever the batch size. No literal percent signs in here.
--
-- Statements that reach tasks by id check their status as `(status = ...) IS TRUE`:
-- a form the planner cannot serve from the status index, so it looks the ids up by
-- the primary key whatever the statistics say. Analyzed while few tasks ran (a
-- queue filled at a quiet time), the plain form read every running task for each
-- id: a finish of 5,000 with 20,000 running took 41 s instead of 0.1 s, the
-- finishes fell behind and the leases of the tasks they ended expired. Those that
-- lock a worker's batch (heartbeat, progress, finish) go through the batch, sorted
-- by id, and look each id up in a LATERAL subquery: a join let the planner scan the
-- table and read the whole batch once per running task (rows x batch) when it
-- expected few running; the UPDATE then joins the rows locked (mine) by id alone,
-- their token and status checked as they were locked.

-- name: insert_tasks
-- New tasks as one JSON array of rows:
-- [id, action, payload, priority, run_at, now, max_attempts, run_timeout, pickup_timeout,
--  pickup_deadline, backoff, unique_key, unique_scope, concurrency, tags, parent_id]
INSERT INTO {schema}.tasks (
    id, action, payload, status, priority, run_at, created_at, updated_at, max_attempts,
    run_timeout, pickup_timeout, pickup_deadline, backoff, unique_key, unique_scope,
    concurrency, tags, parent_id, version, event, origin
)
SELECT e ->> 0, e ->> 1, e -> 2, 'queued', (e ->> 3)::float8, (e ->> 4)::float8,
       (e ->> 5)::float8, (e ->> 5)::float8, (e ->> 6)::integer, (e ->> 7)::float8,
       (e ->> 8)::float8, (e ->> 9)::float8, nullif(e -> 10, 'null'), e ->> 11, e ->> 12,
       nullif(e -> 13, 'null'), e -> 14, e ->> 15, 1, 'added', %(origin)s
FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS r(e, n)
ORDER BY n

-- name: insert_unique_tasks
-- The same, for batches with unique keys: a row whose key a live task holds
-- (in that task's own scope) is skipped; the ids inserted come back.
INSERT INTO {schema}.tasks (
    id, action, payload, status, priority, run_at, created_at, updated_at, max_attempts,
    run_timeout, pickup_timeout, pickup_deadline, backoff, unique_key, unique_scope,
    concurrency, tags, parent_id, version, event, origin
)
SELECT e ->> 0, e ->> 1, e -> 2, 'queued', (e ->> 3)::float8, (e ->> 4)::float8,
       (e ->> 5)::float8, (e ->> 5)::float8, (e ->> 6)::integer, (e ->> 7)::float8,
       (e ->> 8)::float8, (e ->> 9)::float8, nullif(e -> 10, 'null'), e ->> 11, e ->> 12,
       nullif(e -> 13, 'null'), e -> 14, e ->> 15, 1, 'added', %(origin)s
FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS r(e, n)
ORDER BY n
ON CONFLICT (unique_key)
    WHERE unique_key IS NOT NULL AND strpos(unique_scope, '|' || status || '|') > 0
    DO NOTHING
RETURNING id

-- name: tasks_with_keys
-- The tasks an add of these keys may get back (storage.base.key_holder chooses): the
-- holder of each key (in its own scope: at most one, by the unique index), and for
-- each key and status the newest task (by tasks_key_newest): a few rows per key,
-- however many ended tasks once held it (all of them were read and decoded: 3.9 s
-- for an add of a key 100,000 ended tasks had used).
SELECT * FROM {schema}.tasks
WHERE unique_key = ANY(%(keys)s::text[]) AND strpos(unique_scope, '|' || status || '|') > 0
UNION ALL
SELECT x.* FROM unnest(%(keys)s::text[]) AS k(key)
CROSS JOIN unnest(ARRAY['queued', 'running', 'succeeded', 'failed', 'aborted']) AS s(status)
CROSS JOIN LATERAL (
    SELECT * FROM {schema}.tasks AS t
    WHERE t.unique_key = k.key AND t.status = s.status
    ORDER BY t.created_at DESC, t.id DESC
    LIMIT 1) AS x

-- name: save_tasks
-- Write back tasks changed in Python (cold paths), each only if nobody changed it meanwhile.
UPDATE {schema}.tasks AS t SET
    status = r.status, priority = r.priority, run_at = r.run_at, updated_at = r.updated_at,
    started_at = r.started_at, finished_at = r.finished_at, attempts = r.attempts,
    rescues = r.rescues, pickup_deadline = r.pickup_deadline, worker = r.worker,
    lease_until = r.lease_until, token = r.token, abort_requested = r.abort_requested,
    progress = r.progress, result = r.result, error = r.error, errors = r.errors,
    reason = r.reason, version = r.version, event = r.event, origin = %(origin)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
    id text, expected integer, status text, priority float8, run_at float8, updated_at float8,
    started_at float8, finished_at float8, attempts integer, rescues integer,
    pickup_deadline float8, worker text, lease_until float8, token text, abort_requested text,
    progress jsonb, result jsonb, error jsonb, errors jsonb, reason text, version integer,
    event text)
WHERE t.id = r.id AND t.version = r.expected
RETURNING t.id

-- name: get_task
SELECT * FROM {schema}.tasks WHERE id = %(id)s

-- name: lock_task
SELECT * FROM {schema}.tasks WHERE id = %(id)s FOR UPDATE

-- name: get_tasks
SELECT * FROM {schema}.tasks WHERE id = ANY(%(ids)s::text[])

-- name: stats
SELECT action, status, count(*) FROM {schema}.tasks GROUP BY action, status

-- name: delete_finished
WITH d AS (
    DELETE FROM {schema}.tasks
    WHERE id = ANY(%(ids)s::text[]) AND (status IN ('succeeded', 'failed', 'aborted')) IS TRUE
    RETURNING id
), l AS (
    DELETE FROM {schema}.logs WHERE task_id IN (SELECT id FROM d)
)
SELECT id FROM d

-- name: set_origin
-- Deletes cannot name their writer in the row: the trigger reads it from here.
SELECT set_config('conveyor.origin', %(origin)s, true)

-- name: claim_one_action
-- The hot path for one action: ready tasks in claim order along the ready index,
-- locked with SKIP LOCKED (rows other claimers hold are passed over, never waited
-- for), claimed up to the first task that has concurrency conditions. The last
-- row, if any, has a NULL id and flags: 1 = stopped at a conditional task,
-- 2 = some queued task is past its pickup deadline.
-- The claim commits without waiting for its WAL flush (synchronous_commit off for
-- this statement's transaction only): a claim lost in a server crash leaves the
-- task queued, to run again, as after a worker crash; a finish waits for the flush
-- of everything before it, the claim included.
WITH picked AS (
    SELECT id, priority, run_at, concurrency IS NOT NULL AS conditional
    FROM {schema}.tasks
    WHERE status = 'queued' AND action = %(action)s AND run_at <= %(now)s
      AND (pickup_deadline IS NULL OR pickup_deadline > %(now)s)
      AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), stop AS (
    SELECT priority, run_at, id FROM picked WHERE conditional
    ORDER BY priority, run_at, id LIMIT 1
), claimed AS (
    UPDATE {schema}.tasks AS t SET
        status = 'running', worker = %(worker)s, token = %(token)s,
        lease_until = %(lease_until)s, started_at = %(now)s, attempts = t.attempts + 1,
        pickup_deadline = NULL, updated_at = %(now)s, version = t.version + 1,
        event = 'started', origin = %(origin)s
    WHERE t.id = ANY(ARRAY(
        SELECT p.id FROM picked AS p
        WHERE NOT p.conditional
          AND NOT EXISTS (SELECT 1 FROM stop AS s
                          WHERE (s.priority, s.run_at, s.id) < (p.priority, p.run_at, p.id))))
    RETURNING t.*
)
SELECT c.*, NULL::integer FROM claimed AS c
UNION ALL
SELECT (n.t).*, f.flags
FROM (SELECT NULL::{schema}.tasks AS t) AS n,
     (SELECT (CASE WHEN EXISTS (SELECT 1 FROM stop) THEN 1 ELSE 0 END)
           + (CASE WHEN EXISTS (SELECT 1 FROM {schema}.tasks
                                WHERE status = 'queued' AND pickup_deadline <= %(now)s)
              THEN 2 ELSE 0 END) AS flags) AS f
WHERE f.flags > 0

-- name: claim_actions
-- The hot path for several actions. An unlocked peek along each action's ready
-- index finds how many of the first `limit` tasks (merged in claim order) each
-- action has; then each action's share is taken with SKIP LOCKED as above, so
-- no more rows are locked than claimed. Same result shape as claim_one_action,
-- and committed without waiting for the WAL flush as it is.
WITH peek AS (
    SELECT m.action, count(*) AS n FROM (
        SELECT r.action, r.priority, r.run_at, r.id
        FROM unnest(%(actions)s::text[]) AS a(action)
        CROSS JOIN LATERAL (
            SELECT t.action, t.priority, t.run_at, t.id FROM {schema}.tasks AS t
            WHERE t.status = 'queued' AND t.action = a.action AND t.run_at <= %(now)s
              AND (t.pickup_deadline IS NULL OR t.pickup_deadline > %(now)s)
            ORDER BY t.priority, t.run_at, t.id
            LIMIT %(limit)s) AS r
        ORDER BY r.priority, r.run_at, r.id
        LIMIT %(limit)s) AS m
    GROUP BY m.action
), picked AS (
    SELECT r.* FROM peek
    CROSS JOIN LATERAL (
        SELECT t.id, t.priority, t.run_at, t.concurrency IS NOT NULL AS conditional
        FROM {schema}.tasks AS t
        WHERE t.status = 'queued' AND t.action = peek.action AND t.run_at <= %(now)s
          AND (t.pickup_deadline IS NULL OR t.pickup_deadline > %(now)s)
          AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
        ORDER BY t.priority, t.run_at, t.id
        LIMIT peek.n
        FOR UPDATE SKIP LOCKED) AS r
), stop AS (
    SELECT priority, run_at, id FROM picked WHERE conditional
    ORDER BY priority, run_at, id LIMIT 1
), claimed AS (
    UPDATE {schema}.tasks AS t SET
        status = 'running', worker = %(worker)s, token = %(token)s,
        lease_until = %(lease_until)s, started_at = %(now)s, attempts = t.attempts + 1,
        pickup_deadline = NULL, updated_at = %(now)s, version = t.version + 1,
        event = 'started', origin = %(origin)s
    WHERE t.id = ANY(ARRAY(
        SELECT p.id FROM picked AS p
        WHERE NOT p.conditional
          AND NOT EXISTS (SELECT 1 FROM stop AS s
                          WHERE (s.priority, s.run_at, s.id) < (p.priority, p.run_at, p.id))))
    RETURNING t.*
)
SELECT c.*, NULL::integer FROM claimed AS c
UNION ALL
SELECT (n.t).*, f.flags
FROM (SELECT NULL::{schema}.tasks AS t) AS n,
     (SELECT (CASE WHEN EXISTS (SELECT 1 FROM stop) THEN 1 ELSE 0 END)
           + (CASE WHEN EXISTS (SELECT 1 FROM {schema}.tasks
                                WHERE status = 'queued' AND pickup_deadline <= %(now)s)
              THEN 2 ELSE 0 END) AS flags) AS f
WHERE f.flags > 0

-- name: advisory_locks
-- Transaction-level advisory locks, taken in key order (no deadlocks between claimers).
-- Every other careful claimer waits for them, so the transaction that holds them
-- is ended by the server if its client goes quiet for `idle` (a paused or cut-off
-- worker), instead of stalling the others until that client comes back.
SELECT count(pg_advisory_xact_lock(k))
FROM (SELECT k FROM unnest(%(keys)s::bigint[]) AS k ORDER BY k) AS s,
     (SELECT set_config('idle_in_transaction_session_timeout', %(idle)s, true)) AS t

-- name: running_per_action
SELECT action, count(*) FROM {schema}.tasks
WHERE status = 'running' AND action = ANY(%(actions)s::text[])
GROUP BY action

-- name: claim_candidates
-- The careful path: the next page of ready tasks of each action after a keyset
-- position, full rows, not locked (only the tasks chosen are locked, by claim_ids).
SELECT r.* FROM unnest(%(actions)s::text[], %(after_priority)s::float8[],
                       %(after_run_at)s::float8[], %(after_id)s::text[])
                AS a(action, priority, run_at, id)
CROSS JOIN LATERAL (
    SELECT t.* FROM {schema}.tasks AS t
    WHERE t.status = 'queued' AND t.action = a.action AND t.run_at <= %(now)s
      AND (t.pickup_deadline IS NULL OR t.pickup_deadline > %(now)s)
      AND (t.priority, t.run_at, t.id) > (a.priority, a.run_at, a.id COLLATE "C")
    ORDER BY t.priority, t.run_at, t.id
    LIMIT %(page)s) AS r

-- name: claim_ids
-- Claim chosen tasks that are still queued and that nobody else holds a lock on.
WITH locked AS (
    SELECT id FROM {schema}.tasks
    WHERE id = ANY(%(ids)s::text[]) AND (status = 'queued') IS TRUE
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.tasks AS t SET
    status = 'running', worker = %(worker)s, token = %(token)s,
    lease_until = %(lease_until)s, started_at = %(now)s, attempts = t.attempts + 1,
    pickup_deadline = NULL, updated_at = %(now)s, version = t.version + 1,
    event = 'started', origin = %(origin)s
WHERE t.id = ANY(ARRAY(SELECT id FROM locked))
RETURNING t.*

-- name: pickup_expired
SELECT * FROM {schema}.tasks
WHERE status = 'queued' AND pickup_deadline IS NOT NULL AND pickup_deadline <= %(now)s
ORDER BY pickup_deadline
LIMIT 1000
FOR UPDATE SKIP LOCKED

-- name: heartbeat
-- Extend the leases still held, read abort requests, and mark the worker alive,
-- in one statement. A last row with a NULL id says the worker's record exists.
-- Like every statement of a worker on its running tasks, it locks them in the
-- order of their ids (mine) first: two such statements wait for each other
-- instead of deadlocking.
WITH l AS MATERIALIZED (
    SELECT * FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS l(id, token)
    ORDER BY id COLLATE "C"
), mine AS (
    SELECT l.id FROM l CROSS JOIN LATERAL (
        SELECT 1 FROM {schema}.tasks AS t
        WHERE t.id = l.id AND t.token = l.token AND (t.status = 'running') IS TRUE
        FOR UPDATE OF t) AS held
), held AS (
    UPDATE {schema}.tasks AS t SET lease_until = %(lease_until)s
    FROM mine
    WHERE t.id = mine.id
    RETURNING t.id, t.abort_requested
), w AS (
    UPDATE {schema}.workers SET last_seen = %(now)s, running = (SELECT count(*) FROM held)
    WHERE id = %(worker)s
    RETURNING 1
)
SELECT id, abort_requested FROM held
UNION ALL
SELECT NULL, NULL FROM w

-- name: update_progress
WITH r AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(id text, token text, progress jsonb)
    ORDER BY id COLLATE "C"
), mine AS (
    SELECT r.* FROM r CROSS JOIN LATERAL (
        SELECT 1 FROM {schema}.tasks AS t
        WHERE t.id = r.id AND t.token = r.token AND (t.status = 'running') IS TRUE
        FOR UPDATE OF t) AS held
)
UPDATE {schema}.tasks AS t SET
    progress = r.progress, updated_at = %(now)s, version = t.version + 1,
    event = 'progress', origin = %(origin)s
FROM mine AS r
WHERE t.id = r.id
RETURNING t.id, r.token

-- name: finish_tasks
-- Mirrors storage/_ops.finished: the transitions decided by the policy, fenced by the token.
-- A run queued again while an abort is requested is left to the cold path
-- (_ops.finished_with_event: it ends aborted). Rows locked in id order (mine), as
-- by the heartbeat.
WITH c AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS c(
        id text, token text, status text, run_at float8, result jsonb, error jsonb,
        reason text, refund integer, progress jsonb, event text)
    ORDER BY id COLLATE "C"
), mine AS (
    SELECT c.* FROM c CROSS JOIN LATERAL (
        SELECT 1 FROM {schema}.tasks AS t
        WHERE t.id = c.id AND t.token = c.token AND (t.status = 'running') IS TRUE
        FOR UPDATE OF t) AS held
)
UPDATE {schema}.tasks AS t SET
    status = c.status,
    run_at = coalesce(c.run_at, t.run_at),
    pickup_deadline = CASE WHEN c.status = 'queued' AND t.pickup_timeout IS NOT NULL
                           THEN greatest(coalesce(c.run_at, t.run_at), %(now)s)
                                + t.pickup_timeout END,
    result = c.result,
    error = c.error,
    -- the most recent 100 (model.MAX_ERRORS): one is added at a time (a record with
    -- more, from before the bound, loses one more at each: down to 100)
    errors = CASE WHEN c.error IS NULL THEN t.errors
                  WHEN jsonb_array_length(t.errors) > 100
                  THEN (t.errors - 0 - 0) || jsonb_build_array(c.error)
                  WHEN jsonb_array_length(t.errors) = 100
                  THEN (t.errors - 0) || jsonb_build_array(c.error)
                  ELSE t.errors || jsonb_build_array(c.error) END,
    reason = c.reason,
    finished_at = CASE WHEN c.status = 'queued' THEN NULL ELSE %(now)s END,
    attempts = t.attempts - c.refund,
    worker = NULL, token = NULL, lease_until = NULL, abort_requested = NULL,
    progress = coalesce(c.progress, t.progress),
    updated_at = %(now)s, version = t.version + 1, event = c.event, origin = %(origin)s
FROM mine AS c
WHERE t.id = c.id AND NOT (c.status = 'queued' AND t.abort_requested IS NOT NULL)
RETURNING t.id, c.token

-- name: held_tasks
SELECT * FROM {schema}.tasks
WHERE id = ANY(%(ids)s::text[]) AND (status = 'running') IS TRUE
ORDER BY id
FOR UPDATE

-- name: expired_leases
SELECT * FROM {schema}.tasks
WHERE status = 'running' AND lease_until < %(now)s
ORDER BY lease_until
LIMIT 1000
FOR UPDATE SKIP LOCKED

-- name: next_run_at
SELECT min(x.run_at) FROM unnest(%(actions)s::text[]) AS a(action)
CROSS JOIN LATERAL (
    SELECT t.run_at FROM {schema}.tasks AS t
    WHERE t.status = 'queued' AND t.action = a.action
    ORDER BY t.run_at
    LIMIT 1) AS x

-- name: yield_key
-- A task about to enter a status its scope holds its key in, while another task holds the
-- key (taken while this one ran, outside its scope): it gives the key up, rather than two
-- tasks holding one key (the unique index would refuse the change).
UPDATE {schema}.tasks AS t SET unique_key = NULL
WHERE t.id = %(id)s AND t.unique_key IS NOT NULL
  AND strpos(t.unique_scope, '|' || %(status)s || '|') > 0
  AND EXISTS (SELECT 1 FROM {schema}.tasks AS o
              WHERE o.unique_key = t.unique_key AND o.id <> t.id
                AND strpos(o.unique_scope, '|' || o.status || '|') > 0)

-- name: live_duplicate
-- Another task holding a unique key, in its own scope or in the given one.
SELECT id FROM {schema}.tasks
WHERE unique_key = %(key)s AND id <> %(id)s
  AND (strpos(%(scope)s, '|' || status || '|') > 0
       OR strpos(unique_scope, '|' || status || '|') > 0)
LIMIT 1

-- name: append_logs
-- A line with a token (written by a run) is kept only while its task runs under that
-- claim (fencing); returns the positions (1-based) of the kept lines and their seqs.
WITH ok AS (
    SELECT r.task_id, r.ts, r.level, r.message, r.data, r.n
    FROM ROWS FROM (jsonb_to_recordset(%(rows)s::jsonb)
                    AS (task_id text, ts float8, level integer, message text, data jsonb,
                        token text))
         WITH ORDINALITY AS r(task_id, ts, level, message, data, token, n)
    WHERE r.token IS NULL OR EXISTS (
        SELECT 1 FROM {schema}.tasks t
        WHERE t.id = r.task_id AND t.token = r.token AND (t.status = 'running') IS TRUE)
), ins AS (
    INSERT INTO {schema}.logs (task_id, ts, level, message, data)
    SELECT task_id, ts, level, message, data FROM ok
    ORDER BY n
    RETURNING seq
), ch AS (
    INSERT INTO {schema}.changes (task_id, version, status, event, origin, ts)
    SELECT id, version, status, 'log', %(origin)s, %(now)s FROM {schema}.tasks
    WHERE id = ANY(%(ids)s::text[]) AND id IN (SELECT task_id FROM ok)
)
SELECT (SELECT array_agg(n ORDER BY n) FROM ok), (SELECT array_agg(seq ORDER BY seq) FROM ins)

-- name: read_logs
SELECT task_id, seq, ts, level, message, data FROM {schema}.logs
WHERE task_id = %(task_id)s AND seq > %(after_seq)s AND level >= %(min_level)s
ORDER BY seq
LIMIT %(limit)s

-- name: upsert_worker
INSERT INTO {schema}.workers (id, host, pid, actions, concurrency, running, started_at,
                              last_seen, info)
VALUES (%(id)s, %(host)s, %(pid)s, %(actions)s::jsonb, %(concurrency)s, %(running)s,
        %(started_at)s, %(last_seen)s, %(info)s::jsonb)
ON CONFLICT (id) DO UPDATE SET
    actions = excluded.actions, concurrency = excluded.concurrency,
    running = excluded.running, last_seen = excluded.last_seen, info = excluded.info

-- name: delete_worker
DELETE FROM {schema}.workers WHERE id = %(id)s

-- name: forget_workers
DELETE FROM {schema}.workers
WHERE last_seen < %(now)s - greatest(120.0, 2 * (CASE WHEN jsonb_typeof(info -> 'lease') = 'number'
                                                    THEN (info ->> 'lease')::float8
                                                    ELSE 30.0 END))
RETURNING id

-- name: list_workers
SELECT id, host, pid, actions, concurrency, running, started_at, last_seen, info
FROM {schema}.workers ORDER BY started_at, id

-- name: snapshot
SELECT pg_current_snapshot()::text

-- name: changes_since
-- Changes committed after snapshot `since` and visible now, with the snapshot
-- they were read in (the next `since`): rows of the transactions that `since`
-- saw running, and of those that started after it. Exactly once, in any commit order.
-- A row of several tasks has NULL task_id and version, and their ids and versions.
--
-- Only rows of transactions that had completed when this read's snapshot was
-- taken: every row a transaction of this cluster wrote and committed is one
-- (so the bound drops none), but a row restored by pg_restore from a cluster
-- whose transaction counter was ahead of this one's carries an xid of this
-- cluster's future (or, by chance, of a transaction still running here), which
-- "xid >= xmax of since" would match at every read: it would be delivered again
-- at each poll until the counter passed it. Such a row is not delivered while
-- its xid is ahead; if the counter reaches it while the row is still in the feed
-- (retention keeps an hour), it is delivered once then, as the read whose
-- snapshot first sees it completed is the only one to match it. The xmax bound
-- is an index condition (restored rows are not even read); pg_visible_in_snapshot
-- also leaves out an xid that this snapshot sees running.
SELECT s.snap::text, c.seq, c.task_id, c.version, c.status, c.event, c.origin, c.ts,
       c.ids, c.versions
FROM (SELECT pg_current_snapshot() AS snap) AS s
LEFT JOIN LATERAL (
    SELECT * FROM {schema}.changes
    WHERE (xid = ANY(ARRAY(SELECT pg_snapshot_xip(%(since)s::pg_snapshot)))
           OR xid >= pg_snapshot_xmax(%(since)s::pg_snapshot))
      AND xid < pg_snapshot_xmax(s.snap) AND pg_visible_in_snapshot(xid, s.snap)
      AND (%(origin)s::text IS NULL OR origin IS DISTINCT FROM %(origin)s::text)
      AND (NOT %(wakeups)s::boolean OR status = 'queued' OR event = 'abort_requested')
    ORDER BY seq
    LIMIT %(limit)s) AS c ON true
ORDER BY c.seq

-- name: changes_page
-- The same inside one REPEATABLE READ transaction, a page at a time (catch-up);
-- pg_current_snapshot() is the transaction's snapshot, the one the pages are read in.
SELECT seq, task_id, version, status, event, origin, ts, ids, versions
FROM {schema}.changes
WHERE (xid = ANY(ARRAY(SELECT pg_snapshot_xip(%(since)s::pg_snapshot)))
       OR xid >= pg_snapshot_xmax(%(since)s::pg_snapshot))
  AND xid < pg_snapshot_xmax(pg_current_snapshot())
  AND pg_visible_in_snapshot(xid, pg_current_snapshot())
  AND (%(origin)s::text IS NULL OR origin IS DISTINCT FROM %(origin)s::text)
  AND (NOT %(wakeups)s::boolean OR status = 'queued' OR event = 'abort_requested')
  AND seq > %(after)s
ORDER BY seq
LIMIT %(limit)s

-- name: prune_finished
WITH doomed AS (
    SELECT id FROM {schema}.tasks
    WHERE finished_at IS NOT NULL AND finished_at < %(before)s
      AND status IN ('succeeded', 'failed', 'aborted')
    ORDER BY finished_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), d AS (
    DELETE FROM {schema}.tasks WHERE id IN (SELECT id FROM doomed)
    RETURNING id
), l AS (
    DELETE FROM {schema}.logs WHERE task_id IN (SELECT id FROM d)
)
SELECT count(*) FROM d

-- name: prune_changes
DELETE FROM {schema}.changes
WHERE seq IN (SELECT seq FROM {schema}.changes WHERE ts < %(before)s ORDER BY seq
              LIMIT %(batch)s)
