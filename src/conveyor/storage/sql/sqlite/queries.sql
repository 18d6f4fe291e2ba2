-- Named queries of the SQLite backend. Parameters use the :name style.
-- Lists are passed as one JSON array parameter and read with json_each.

-- name: insert_task
INSERT INTO conveyor_tasks (
    id, action, payload, status, priority, run_at, created_at, updated_at, started_at,
    finished_at, attempts, max_attempts, rescues, run_timeout, pickup_timeout, pickup_deadline,
    backoff, worker, lease_until, token, abort_requested, progress, result, error, errors, reason,
    unique_key, unique_scope, concurrency, tags, parent_id, public_url, version, event, origin
) VALUES (
    :id, :action, :payload, :status, :priority, :run_at, :created_at, :updated_at, :started_at,
    :finished_at, :attempts, :max_attempts, :rescues, :run_timeout, :pickup_timeout,
    :pickup_deadline, :backoff, :worker, :lease_until, :token, :abort_requested, :progress,
    :result, :error, :errors, :reason, :unique_key, :unique_scope, :concurrency, :tags,
    :parent_id, :public_url, :version, :event, :origin
)

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

-- name: find_live_duplicate
SELECT * FROM conveyor_tasks
WHERE unique_key = :unique_key
  AND (instr(:scope, '|' || status || '|') > 0 OR instr(unique_scope, '|' || status || '|') > 0)
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
  AND status IN ('succeeded', 'failed', 'aborted')
RETURNING id

-- name: delete_logs
DELETE FROM conveyor_logs WHERE task_id IN (SELECT value FROM json_each(:ids))

-- name: pickup_expired
SELECT * FROM conveyor_tasks
WHERE status = 'queued' AND pickup_deadline IS NOT NULL AND pickup_deadline <= :now

-- name: running_per_action
SELECT action, count(*) FROM conveyor_tasks
WHERE status = 'running' AND action IN (SELECT value FROM json_each(:actions))
GROUP BY action

-- name: claim_candidates
-- Ready tasks in claim order, one page at a time (keyset on the ready index).
SELECT id, action, priority, run_at, concurrency IS NOT NULL AS conditional
FROM conveyor_tasks
WHERE status = 'queued' AND run_at <= :now
  AND action IN (SELECT value FROM json_each(:actions))
  AND (priority, run_at, id) > (:after_priority, :after_run_at, :after_id)
ORDER BY priority, run_at, id
LIMIT :page

-- name: claim_tasks
UPDATE conveyor_tasks SET
    status = 'running', worker = :worker, token = :token, lease_until = :lease_until,
    started_at = :now, attempts = attempts + 1, pickup_deadline = NULL, updated_at = :now,
    version = version + 1, event = 'started', origin = :origin
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'queued'
RETURNING *

-- name: task_conditions
SELECT concurrency FROM conveyor_tasks WHERE id = :id

-- name: heartbeat_task
UPDATE conveyor_tasks SET lease_until = :lease_until
WHERE id = :id AND token = :token AND status = 'running'

-- name: abort_requests
SELECT id, abort_requested FROM conveyor_tasks
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'running'
  AND abort_requested IS NOT NULL

-- name: touch_worker
UPDATE conveyor_workers SET last_seen = :now, running = :running WHERE id = :id

-- name: update_progress
UPDATE conveyor_tasks SET
    progress = :progress, updated_at = :now, version = version + 1, event = 'progress',
    origin = :origin
WHERE id = :id AND token = :token AND status = 'running'

-- name: finish_task
-- Mirrors storage/_ops.finished: the transition decided by the policy, fenced by the token.
UPDATE conveyor_tasks SET
    status = :status,
    run_at = coalesce(:run_at, run_at),
    pickup_deadline = CASE WHEN :status = 'queued' AND pickup_timeout IS NOT NULL
                           THEN coalesce(:run_at, run_at) + pickup_timeout END,
    result = :result,
    error = :error,
    errors = CASE WHEN :error IS NULL THEN errors ELSE json_insert(errors, '$[#]', json(:error)) END,
    reason = :reason,
    finished_at = CASE WHEN :status = 'queued' THEN NULL ELSE :now END,
    attempts = attempts - :refund,
    worker = NULL, token = NULL, lease_until = NULL, abort_requested = NULL,
    progress = coalesce(:progress, progress),
    updated_at = :now, version = version + 1, event = :event, origin = :origin
WHERE id = :id AND token = :token AND status = 'running'

-- name: held_tasks
SELECT * FROM conveyor_tasks
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'running'

-- name: expired_leases
SELECT * FROM conveyor_tasks WHERE status = 'running' AND lease_until < :now

-- name: next_run_at
SELECT min(run_at) FROM conveyor_tasks
WHERE status = 'queued' AND action IN (SELECT value FROM json_each(:actions))

-- name: log_seq
SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'conveyor_logs'), 0)

-- name: insert_log
INSERT INTO conveyor_logs (task_id, ts, level, message, data)
VALUES (:task_id, :ts, :level, :message, :data)

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

-- name: list_workers
SELECT id, host, pid, actions, concurrency, running, started_at, last_seen, info
FROM conveyor_workers ORDER BY started_at

-- name: last_change
SELECT coalesce(max(seq), 0) FROM conveyor_changes

-- name: changes_after
SELECT seq, task_id, version, status, event, origin, ts FROM conveyor_changes
WHERE seq > :after ORDER BY seq LIMIT :limit

-- name: old_finished
SELECT id FROM conveyor_tasks
WHERE finished_at IS NOT NULL AND finished_at < :before
  AND status IN ('succeeded', 'failed', 'aborted')
LIMIT :batch

-- name: prune_changes
DELETE FROM conveyor_changes
WHERE seq IN (SELECT seq FROM conveyor_changes WHERE ts < :before ORDER BY seq LIMIT :batch)
  AND seq < (SELECT max(seq) FROM conveyor_changes)
