-- The newest task of each status holding a unique key (find_live_duplicate): a key that
-- 100,000 ended tasks had used was read whole at each add of it (70-145 ms). It serves
-- the lookups by key that conveyor_tasks_key served.
CREATE INDEX conveyor_tasks_key_newest ON conveyor_tasks (unique_key, status, created_at, id)
    WHERE unique_key IS NOT NULL;
DROP INDEX conveyor_tasks_key;
