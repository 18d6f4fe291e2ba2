-- conveyor schema for PostgreSQL, version 4: two indexes for reads that grew with the
-- table's history.
--
-- The newest tasks first (`conveyor ls`, the dashboard's window and its live query:
-- `-created_at,-id` with a limit) sorted the whole table: 740 ms at 1,500,000 tasks,
-- on every refresh of the window. The order of the index is the one the query
-- compiler writes (DESC NULLS LAST).
CREATE INDEX tasks_created ON {schema}.tasks (created_at DESC NULLS LAST, id DESC NULLS LAST);

-- The newest task of each status holding a unique key (the tasks an add of that key
-- may get back): a key that 100,000 ended tasks had used was read whole at each add.
-- It serves the lookups by key that tasks_key served.
CREATE INDEX tasks_key_newest ON {schema}.tasks (unique_key, status, created_at, id)
    WHERE unique_key IS NOT NULL;
DROP INDEX {schema}.tasks_key;
