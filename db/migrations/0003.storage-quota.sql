-- Per-user storage quotas, enforced by the api functions (so a psql user meets
-- them too; the check itself is db/private/app.assert_within_quota.sql).
-- app.settings holds the service-wide values an administrator sets
-- (db/apply.py writes USER_QUOTA_MB here); app.users.stored_bytes is kept by a
-- trigger, so every check is one row read, not a sum over records.

CREATE TABLE app.settings (
    -- One row: the key can only be true.
    singleton boolean PRIMARY KEY DEFAULT true CONSTRAINT one_row CHECK (singleton),
    -- 0: no quota.
    user_quota_bytes bigint NOT NULL DEFAULT 0 CONSTRAINT user_quota_not_negative CHECK (user_quota_bytes >= 0)
);

INSERT INTO app.settings DEFAULT VALUES;

COMMENT ON TABLE app.settings IS
    'Service-wide settings the api functions enforce (one row). user_quota_bytes: 0 = no quota.';

ALTER TABLE app.users
    ADD COLUMN stored_bytes bigint NOT NULL DEFAULT 0
        CONSTRAINT stored_bytes_not_negative CHECK (stored_bytes >= 0);

COMMENT ON COLUMN app.users.stored_bytes IS
    'MP3 bytes of the user''s finished records (kept by a trigger on app.records).';

UPDATE app.users AS u
SET stored_bytes = totals.bytes
FROM (
    SELECT r.user_id, sum(r.size)::bigint AS bytes
    FROM app.records AS r
    WHERE r.size IS NOT NULL
    GROUP BY r.user_id
) AS totals
WHERE totals.user_id = u.id;

-- A record counts from the moment it is finished (its size set) until it is
-- deleted, however that happens (the api, a cascade, an admin in pgAdmin).
CREATE FUNCTION app.count_stored_bytes() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        UPDATE app.users AS u
        SET stored_bytes = u.stored_bytes + coalesce(NEW.size, 0) - coalesce(OLD.size, 0)
        WHERE u.id = NEW.user_id;
        RETURN NEW;
    END IF;
    UPDATE app.users AS u
    SET stored_bytes = u.stored_bytes - coalesce(OLD.size, 0)
    WHERE u.id = OLD.user_id;
    RETURN OLD;
END;
$$;

REVOKE ALL ON FUNCTION app.count_stored_bytes() FROM PUBLIC;

CREATE TRIGGER records_count_stored_bytes
    AFTER UPDATE OF size OR DELETE ON app.records
    FOR EACH ROW EXECUTE FUNCTION app.count_stored_bytes();
