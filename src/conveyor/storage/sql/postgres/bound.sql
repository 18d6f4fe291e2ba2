-- The objects of conveyor's schema whose definitions name the schema: the bodies
-- of the change-feed trigger functions ({schema}.changes) and the argument of
-- the changes_notify trigger (the NOTIFY channel, {channel}). Everything else
-- follows an ALTER SCHEMA ... RENAME (tables, indexes, sequences, and triggers,
-- which point at their functions by oid); these keep the name they were made
-- with, so a schema restored or renamed under another name would write its
-- change feed into the old name's tables and notify on its channel.
--
-- Not a migration: `conveyor migrate` (and ?migrate=true) runs this file, after
-- the migrations, in their transaction and under their lock, when these objects
-- name another schema than the one migrated. It holds the definitions the
-- migrations up to the current schema version leave (tasks_inserted and
-- tasks_updated of 0003, tasks_deleted and the changes_notify trigger of 0001),
-- word for word: a migration that redefines one of them must change it here too
-- (tests/postgres/test_restore.py compares the two).

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

CREATE OR REPLACE FUNCTION {schema}.tasks_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.changes (task_id, version, status, event, origin, ts)
    SELECT id, version + 1, status, 'deleted',
           nullif(current_setting('conveyor.origin', true), ''),
           extract(epoch FROM clock_timestamp())::double precision
    FROM old_rows;
    RETURN NULL;
END
$$;

-- PostgreSQL 13 has no CREATE OR REPLACE TRIGGER: dropped and made again, in the
-- migration's transaction (no statement runs between the two).
DROP TRIGGER IF EXISTS changes_notify ON {schema}.changes;
CREATE TRIGGER changes_notify AFTER INSERT ON {schema}.changes
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION {schema}.changes_notify({channel});
