-- Named queries of the SQLite backend. Parameters use the :name style.
-- Lists are passed as one JSON array parameter and read with json_each.
-- A unary + on a column (+status) keeps the planner from choosing that column's index
-- where the primary key is the right one.

-- name: insert_tasks
-- New tasks, given as one JSON array of rows (binding one parameter per column
-- costs about a microsecond each in Python's sqlite3; SQLite parses JSON in C).
-- Each row: [id, action, payload, priority, run_at, now, max_attempts, run_timeout,
--            pickup_timeout, pickup_deadline, backoff, unique_key, unique_scope,
--            concurrency, tags, parent_id]
INSERT INTO conveyor_tasks (
    id, action, payload, status, priority, run_at, created_at, updated_at, max_attempts,
    run_timeout, pickup_timeout, pickup_deadline, backoff, unique_key, unique_scope,
    concurrency, tags, parent_id, version, event, origin
)
SELECT value ->> 0, value ->> 1, value -> 2, 'queued', value ->> 3, value ->> 4, value ->> 5,
       value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9,
       nullif(value -> 10, 'null'), value ->> 11, value ->> 12, nullif(value -> 13, 'null'),
       value -> 14, value ->> 15, 1, 'added', :origin
FROM json_each(:rows)

-- name: update_task
-- Write back a whole task changed in Python (cold paths), if nobody changed it meanwhile.
UPDATE conveyor_tasks SET
    status = :status, priority = :priority, run_at = :run_at, updated_at = :updated_at,
    started_at = :started_at, finished_at = :finished_at, attempts = :attempts,
    rescues = :rescues, pickup_deadline = :pickup_deadline, worker = :worker,
    lease_until = :lease_until, token = :token, abort_requested = :abort_requested,
    progress = :progress, result = :result, error = :error, errors = :errors, reason = :reason,
    version = :version, event = :event, origin = :origin
WHERE id = :id AND version = :expected_version

-- name: yield_key
-- A task about to enter a status its scope holds its key in, while another task holds the
-- key (taken while this one ran, outside its scope): it gives the key up, rather than two
-- tasks holding one key (the unique index would refuse the change).
UPDATE conveyor_tasks SET unique_key = NULL
WHERE id = :id AND unique_key IS NOT NULL
  AND instr(unique_scope, '|' || :status || '|') > 0
  AND EXISTS (SELECT 1 FROM conveyor_tasks AS o
              WHERE o.unique_key = conveyor_tasks.unique_key AND o.id <> conveyor_tasks.id
                AND instr(o.unique_scope, '|' || o.status || '|') > 0)

-- name: find_live_duplicate
-- The task holding a key (the rule of storage.base.key_holder): the one in its own
-- scope, else the newest in the given one. Chosen among the holder (at most one, by
-- the unique index) and the newest task of each status in the scope (by
-- conveyor_tasks_key_newest): a few rows, however many ended tasks once held the key.
SELECT * FROM (
    SELECT * FROM conveyor_tasks
    WHERE unique_key = :unique_key AND instr(unique_scope, '|' || status || '|') > 0
    UNION ALL
    SELECT t.* FROM (SELECT 'queued' AS s UNION ALL SELECT 'running' UNION ALL
                     SELECT 'succeeded' UNION ALL SELECT 'failed' UNION ALL
                     SELECT 'aborted') AS st
    JOIN conveyor_tasks AS t ON t.id = (
        SELECT n.id FROM conveyor_tasks AS n
        WHERE n.unique_key = :unique_key AND n.status = st.s
        ORDER BY n.created_at DESC, n.id DESC
        LIMIT 1)
    WHERE instr(:scope, '|' || st.s || '|') > 0)
ORDER BY instr(unique_scope, '|' || status || '|') > 0 DESC, created_at DESC, id DESC
LIMIT 1

-- name: get_task
SELECT * FROM conveyor_tasks WHERE id = :id

-- name: get_tasks
SELECT * FROM conveyor_tasks WHERE id IN (SELECT value FROM json_each(:ids))

-- name: stats
SELECT action, status, count(*) FROM conveyor_tasks GROUP BY action, status

-- name: delete_finished
DELETE FROM conveyor_tasks
WHERE id IN (SELECT value FROM json_each(:ids))
  AND +status IN ('succeeded', 'failed', 'aborted')
RETURNING id

-- name: own_deletions
-- The delete trigger records deletions without a writer (origin NULL, as for a
-- prune); a delete() names itself, having announced them already.
UPDATE conveyor_changes SET origin = :origin
WHERE seq > :after AND event = 'deleted' AND origin IS NULL

-- name: delete_logs
DELETE FROM conveyor_logs WHERE task_id IN (SELECT value FROM json_each(:ids))

-- name: pickup_expired
SELECT * FROM conveyor_tasks INDEXED BY conveyor_tasks_pickup
WHERE status = 'queued' AND pickup_deadline IS NOT NULL AND pickup_deadline <= :now

-- name: running_per_action
SELECT action, count(*) FROM conveyor_tasks
WHERE status = 'running' AND action IN (SELECT value FROM json_each(:actions))
GROUP BY action

-- name: claim_candidates
-- Ready tasks of one action in claim order, one page at a time (keyset on the ready index).
SELECT priority, run_at, id, concurrency IS NOT NULL
FROM conveyor_tasks INDEXED BY conveyor_tasks_ready
WHERE status = 'queued' AND action = :action AND run_at <= :now
  AND (priority, run_at, id) > (:after_priority, :after_run_at, :after_id)
ORDER BY priority, run_at, id
LIMIT :page

-- name: claim_top_of_action
-- One member of claim_top (the storage joins one per action with UNION ALL and
-- numbers :action as :a0, :a1, ...): an action's first ready tasks along its index.
SELECT * FROM (
    SELECT priority, run_at, id, action, concurrency IS NOT NULL AS conditional
    FROM conveyor_tasks INDEXED BY conveyor_tasks_ready
    WHERE status = 'queued' AND action = :action AND run_at <= :now
    ORDER BY priority, run_at, id
    LIMIT :limit)

-- name: claim_top
-- The first :limit ready tasks over all the worker's actions, in claim order: their
-- ids as one JSON array, and 1 if any of them has concurrency conditions (one row:
-- the database thread hands the GIL back once, not once per task; the ids go to
-- claim_tasks as they are). The members are claim_top_of_action, once per action.
SELECT json_group_array(id), coalesce(max(conditional), 0) FROM (
    {members}
    ORDER BY priority, run_at, id
    LIMIT :limit)

-- name: claim_tasks
-- Claims the listed queued tasks under one token; claimed_rows reads them back.
UPDATE conveyor_tasks SET
    status = 'running', worker = :worker, token = :token, lease_until = :lease_until,
    started_at = :now, attempts = attempts + 1, pickup_deadline = NULL, updated_at = :now,
    version = version + 1, event = 'started', origin = :origin
WHERE id IN (SELECT value FROM json_each(:ids)) AND +status = 'queued'

-- name: record_claimed
-- The change-feed row of a claim: every task the token holds among :ids, in one batch.
INSERT INTO conveyor_changes (task_id, version, status, event, origin, ts, batch)
SELECT NULL, NULL, 'running', 'started', :origin, :now, json_group_array(json_array(id, version))
FROM conveyor_tasks
WHERE id IN (SELECT value FROM json_each(:ids)) AND token = :token AND +status = 'running'
HAVING count(*) > 0

-- name: claimed_rows
-- The rows a claim took, as one JSON array of rows in COLUMNS order without the
-- columns claim_tasks has just set (status, updated_at, started_at, worker,
-- lease_until, token, pickup_deadline): the storage fills those in.
SELECT json_group_array(json_array(
    id, action, json(payload), priority, run_at, created_at,
    finished_at, attempts, max_attempts, rescues, run_timeout, pickup_timeout,
    json(backoff), abort_requested, json(progress), json(result),
    json(error), json(errors), reason, unique_key, unique_scope, json(concurrency), json(tags),
    parent_id, public_url, version))
FROM conveyor_tasks
WHERE id IN (SELECT value FROM json_each(:ids)) AND token = :token AND +status = 'running'

-- name: task_conditions
SELECT concurrency FROM conveyor_tasks WHERE id = :id

-- name: heartbeat_task
UPDATE conveyor_tasks SET lease_until = :lease_until
WHERE id = :id AND token = :token AND status = 'running'

-- name: abort_requests
SELECT id, abort_requested FROM conveyor_tasks
WHERE id IN (SELECT value FROM json_each(:ids)) AND +status = 'running'
  AND abort_requested IS NOT NULL

-- name: touch_worker
UPDATE conveyor_workers SET last_seen = :now, running = :running WHERE id = :id

-- name: update_progress
UPDATE conveyor_tasks SET
    progress = :progress, updated_at = :now, version = version + 1, event = 'progress',
    origin = :origin
WHERE id = :id AND token = :token AND status = 'running'
RETURNING version

-- name: finish_tasks
-- Mirrors storage/_ops.finished: the transitions decided by the policy, fenced by the token.
-- A run queued again while an abort is requested is left to the cold path
-- (_ops.finished_with_event: it ends aborted).
-- One JSON array of rows: [id, token, status, run_at (queued only), result, error, reason,
--                          refund (0/1), progress, event]
UPDATE conveyor_tasks SET
    status = c.value ->> 2,
    run_at = coalesce(c.value ->> 3, run_at),
    pickup_deadline = CASE WHEN c.value ->> 2 = 'queued' AND pickup_timeout IS NOT NULL
                           THEN max(coalesce(c.value ->> 3, run_at), :now) + pickup_timeout END,
    result = nullif(c.value -> 4, 'null'),
    error = nullif(c.value -> 5, 'null'),
    -- the most recent 100 (model.MAX_ERRORS): one is added at a time (a record with
    -- more, from before the bound, loses one more at each: down to 100)
    errors = CASE WHEN c.value -> 5 = 'null' THEN errors
                  WHEN json_array_length(errors) > 100
                  THEN json_insert(json_remove(errors, '$[0]', '$[0]'), '$[#]', json(c.value -> 5))
                  WHEN json_array_length(errors) = 100
                  THEN json_insert(json_remove(errors, '$[0]'), '$[#]', json(c.value -> 5))
                  ELSE json_insert(errors, '$[#]', json(c.value -> 5)) END,
    reason = c.value ->> 6,
    finished_at = CASE WHEN c.value ->> 2 = 'queued' THEN NULL ELSE :now END,
    attempts = attempts - (c.value ->> 7),
    worker = NULL, token = NULL, lease_until = NULL, abort_requested = NULL,
    progress = coalesce(nullif(c.value -> 8, 'null'), progress),
    updated_at = :now, version = version + 1, event = c.value ->> 9, origin = :origin
FROM json_each(:rows) AS c
WHERE conveyor_tasks.id = c.value ->> 0 AND conveyor_tasks.token = c.value ->> 1
  AND +conveyor_tasks.status = 'running'
  AND NOT (c.value ->> 2 = 'queued' AND conveyor_tasks.abort_requested IS NOT NULL)
RETURNING conveyor_tasks.id, conveyor_tasks.version, conveyor_tasks.status, conveyor_tasks.event

-- name: finishable
-- Which of the rows of finish_succeeded still hold their token: [[id, new version], ...]
-- as one JSON text (read before the update, inside the same write transaction), and
-- how many they are.
SELECT json_group_array(json_array(t.id, t.version + 1)), count(*)
FROM json_each(:rows) AS c JOIN conveyor_tasks AS t ON t.id = c.value ->> 0
WHERE t.token = c.value ->> 1 AND +t.status = 'running'

-- name: finish_succeeded
-- The common case of finish_tasks, with less to read per row: plain successes.
-- One JSON array of rows: [id, token, result, progress]
UPDATE conveyor_tasks SET
    status = 'succeeded', result = nullif(c.value -> 2, 'null'), error = NULL, reason = NULL,
    finished_at = :now, worker = NULL, token = NULL, lease_until = NULL,
    abort_requested = NULL, progress = coalesce(nullif(c.value -> 3, 'null'), progress),
    pickup_deadline = NULL, updated_at = :now, version = version + 1, event = 'succeeded',
    origin = :origin
FROM json_each(:rows) AS c
WHERE conveyor_tasks.id = c.value ->> 0 AND conveyor_tasks.token = c.value ->> 1
  AND +conveyor_tasks.status = 'running'

-- name: held_tasks
SELECT * FROM conveyor_tasks
WHERE id IN (SELECT value FROM json_each(:ids)) AND +status = 'running'

-- name: expired_leases
SELECT * FROM conveyor_tasks WHERE status = 'running' AND lease_until < :now

-- name: next_run_at
SELECT run_at FROM conveyor_tasks INDEXED BY conveyor_tasks_due
WHERE status = 'queued' AND action IN (SELECT value FROM json_each(:actions))
ORDER BY run_at
LIMIT 1

-- name: log_seq
SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'conveyor_logs'), 0)

-- name: insert_log
INSERT INTO conveyor_logs (task_id, ts, level, message, data)
VALUES (:task_id, :ts, :level, :message, :data)

-- name: record_change
-- One change-feed row: a single task (task_id, version) or a batch of them.
INSERT INTO conveyor_changes (task_id, version, status, event, origin, ts, batch)
VALUES (:task_id, :version, :status, :event, :origin, :now, :batch)

-- name: running_tokens
-- The claims that hold these tasks now: a run's log lines are stored only under its own.
SELECT id, token FROM conveyor_tasks
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'running'

-- name: log_changes
INSERT INTO conveyor_changes (task_id, version, status, event, origin, ts)
SELECT id, version, status, 'log', :origin, :now FROM conveyor_tasks
WHERE id IN (SELECT value FROM json_each(:ids))

-- name: read_logs
SELECT task_id, seq, ts, level, message, data FROM conveyor_logs
WHERE task_id = :task_id AND seq > :after_seq AND level >= :min_level
ORDER BY seq
LIMIT :limit

-- name: upsert_worker
INSERT INTO conveyor_workers (id, host, pid, actions, concurrency, running, started_at, last_seen, info)
VALUES (:id, :host, :pid, :actions, :concurrency, :running, :started_at, :last_seen, :info)
ON CONFLICT (id) DO UPDATE SET
    actions = excluded.actions, concurrency = excluded.concurrency, running = excluded.running,
    last_seen = excluded.last_seen, info = excluded.info

-- name: delete_worker
DELETE FROM conveyor_workers WHERE id = :id

-- name: forget_workers
DELETE FROM conveyor_workers
WHERE last_seen < :now - max(120.0, 2 * coalesce(json_extract(info, '$.lease'), 30))
RETURNING id

-- name: list_workers
SELECT id, host, pid, actions, concurrency, running, started_at, last_seen, info
FROM conveyor_workers ORDER BY started_at

-- name: last_change
SELECT coalesce(max(seq), 0) FROM conveyor_changes

-- name: changes_after
SELECT seq, task_id, version, status, event, origin, ts, batch FROM conveyor_changes
WHERE seq > :after AND seq <= :upto ORDER BY seq LIMIT :limit

-- name: foreign_changes_after
-- Changes written by other storage objects (other processes, other connections).
SELECT seq, task_id, version, status, event, origin, ts, batch FROM conveyor_changes
WHERE seq > :after AND seq <= :upto AND origin IS NOT :origin ORDER BY seq LIMIT :limit

-- name: foreign_wakeups_after
-- Changes by other writers that can make a worker act: a task became ready, an abort.
SELECT seq, task_id, version, status, event, origin, ts, batch FROM conveyor_changes
WHERE seq > :after AND seq <= :upto AND origin IS NOT :origin
  AND (status = 'queued' OR event = 'abort_requested')
ORDER BY seq LIMIT :limit

-- name: old_finished
-- "+status": through the finished index (the planner took the status index, and
-- each batch went through every finished task: minutes for 500,000 old tasks)
SELECT id FROM conveyor_tasks
WHERE finished_at IS NOT NULL AND finished_at < :before
  AND +status IN ('succeeded', 'failed', 'aborted')
LIMIT :batch

-- name: prune_changes
-- Of the oldest `batch` rows, those older than :before: the caller goes on while a
-- whole batch went. A feed with nothing old enough was read through, every row
-- under the write lock (0.5-0.9 s at 1,000,000 rows, each minute in each worker).
-- The host's one clock writes every row, so ts follows seq (after the clock is set
-- back, the rows written before wait until they are old themselves).
DELETE FROM conveyor_changes
WHERE seq IN (SELECT seq FROM (SELECT seq, ts FROM conveyor_changes ORDER BY seq LIMIT :batch)
              WHERE ts < :before)
  AND seq < (SELECT max(seq) FROM conveyor_changes)
