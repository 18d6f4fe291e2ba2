-- conveyor schema for PostgreSQL, version 3: one change-feed row per statement and
-- kind of change, instead of one per task.
--
-- A statement that adds 250 tasks, or claims or finishes 100, wrote as many rows
-- into `changes` (each a heap tuple and two index entries); it now writes one row
-- per (status, event, origin, time) it made, carrying the tasks' ids and versions
-- as two arrays in id order. A change of one task keeps `task_id` and `version`
-- as before. Readers expand the arrays (every task's change is still delivered
-- once, in order); the changes of one row share its `seq`.

ALTER TABLE {schema}.changes
    ALTER COLUMN task_id DROP NOT NULL,
    ALTER COLUMN version DROP NOT NULL,
    ADD COLUMN ids text[] COLLATE "C",
    ADD COLUMN versions integer[],
    ADD CONSTRAINT changes_one_or_many CHECK (
        (task_id IS NOT NULL AND version IS NOT NULL AND ids IS NULL AND versions IS NULL)
        OR (task_id IS NULL AND version IS NULL AND ids IS NOT NULL AND versions IS NOT NULL
            AND cardinality(ids) = cardinality(versions))) NOT VALID;
-- NOT VALID: the rows already there (one task each, by construction) are not
-- scanned, so the upgrade holds its lock on the table only for a moment.

CREATE OR REPLACE FUNCTION {schema}.tasks_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.changes (task_id, version, status, event, origin, ts, ids, versions)
    SELECT CASE WHEN count(*) = 1 THEN min(id) END,
           CASE WHEN count(*) = 1 THEN min(version) END,
           status, event, origin, updated_at,
           CASE WHEN count(*) > 1 THEN array_agg(id ORDER BY id) END,
           CASE WHEN count(*) > 1 THEN array_agg(version ORDER BY id) END
    FROM new_rows
    GROUP BY status, event, origin, updated_at;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION {schema}.tasks_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- only changes that bump the version (a heartbeat moving lease_until is not one)
    INSERT INTO {schema}.changes (task_id, version, status, event, origin, ts, ids, versions)
    SELECT CASE WHEN count(*) = 1 THEN min(n.id) END,
           CASE WHEN count(*) = 1 THEN min(n.version) END,
           n.status, n.event, n.origin, n.updated_at,
           CASE WHEN count(*) > 1 THEN array_agg(n.id ORDER BY n.id) END,
           CASE WHEN count(*) > 1 THEN array_agg(n.version ORDER BY n.id) END
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.version <> o.version
    GROUP BY n.status, n.event, n.origin, n.updated_at;
    RETURN NULL;
END
$$;
