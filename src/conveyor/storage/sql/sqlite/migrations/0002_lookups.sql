-- Dedupe lookups: the task holding a key, by key (find_live_duplicate). The unique
-- index above holds only the tasks whose status is in their own scope, so a lookup
-- that also asks about another scope could not use it and read the whole table.
CREATE INDEX conveyor_tasks_key ON conveyor_tasks (unique_key) WHERE unique_key IS NOT NULL;
-- The newest tasks first (the dashboard's table, `ls`, a live query's window):
-- without it each such read sorted the whole table.
CREATE INDEX conveyor_tasks_created ON conveyor_tasks (created_at, id);
