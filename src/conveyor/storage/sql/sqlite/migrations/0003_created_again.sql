-- The newest tasks first by index, again: version 2 first held only the key index
-- (the created index joined that file later), so a file migrated then lacks it.
CREATE INDEX IF NOT EXISTS conveyor_tasks_created ON conveyor_tasks (created_at, id);
