-- The notification says whether the statement made some task queued: its payload
-- is the writer's origin, then " q" if so. A listener of another process wakes its
-- workers on it at once, before it reads the change table (the read still follows,
-- and a notification is still only a hint: workers also poll).
CREATE OR REPLACE FUNCTION {schema}.changes_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    o text;
BEGIN
    SELECT coalesce(origin, '') INTO o FROM new_rows LIMIT 1;
    IF FOUND THEN
        IF EXISTS (SELECT 1 FROM new_rows WHERE status = 'queued') THEN
            o := o || ' q';
        END IF;
        PERFORM pg_notify(TG_ARGV[0], o);
    END IF;
    RETURN NULL;
END
$$;
