-- A bound on what the whole service stores, beside each user's quota: accounts
-- are free, so per-user quotas alone bound nothing overall. app.storage keeps
-- the running totals (kept by the trigger that keeps each user's), so the
-- bound's check and /metrics read one row instead of summing app.records.

ALTER TABLE app.settings
    ADD COLUMN storage_max_bytes bigint NOT NULL DEFAULT 0
        CONSTRAINT storage_max_not_negative CHECK (storage_max_bytes >= 0);

COMMENT ON TABLE app.settings IS
    'Service-wide settings the api functions enforce (one row). user_quota_bytes, storage_max_bytes: 0 = none.';

CREATE TABLE app.storage (
    -- One row: the key can only be true.
    singleton boolean PRIMARY KEY DEFAULT true CONSTRAINT one_row CHECK (singleton),
    records bigint NOT NULL DEFAULT 0 CONSTRAINT records_not_negative CHECK (records >= 0),
    bytes bigint NOT NULL DEFAULT 0 CONSTRAINT bytes_not_negative CHECK (bytes >= 0)
);

INSERT INTO app.storage (records, bytes)
SELECT count(*), coalesce(sum(r.size), 0)::bigint
FROM app.records AS r
WHERE r.size IS NOT NULL;

COMMENT ON TABLE app.storage IS
    'Finished records and their MP3 bytes, all users together (one row, kept by a trigger on app.records).';

-- As before, and the service's totals with each user's; and rows inserted
-- already finished (by hand, in pgAdmin) count too. The totals row is updated
-- before the user's: api.record_finish locks them in that order too, so two
-- transactions never wait for each other the other way round.
CREATE OR REPLACE FUNCTION app.count_stored_bytes() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_size bigint := CASE WHEN TG_OP <> 'INSERT' THEN OLD.size END;
    new_size bigint := CASE WHEN TG_OP <> 'DELETE' THEN NEW.size END;
    owner_id bigint := CASE WHEN TG_OP = 'DELETE' THEN OLD.user_id ELSE NEW.user_id END;
BEGIN
    UPDATE app.storage AS s
    SET records = s.records + (new_size IS NOT NULL)::integer - (old_size IS NOT NULL)::integer,
        bytes = s.bytes + coalesce(new_size, 0) - coalesce(old_size, 0);
    UPDATE app.users AS u
    SET stored_bytes = u.stored_bytes + coalesce(new_size, 0) - coalesce(old_size, 0)
    WHERE u.id = owner_id;
    RETURN NULL;
END;
$$;

-- Not for the api's own inserts (record_begin: no size yet), or every upload
-- would hold the totals row's lock from its first byte to its COMMIT.
CREATE TRIGGER records_count_finished_inserts
    AFTER INSERT ON app.records
    FOR EACH ROW WHEN (NEW.size IS NOT NULL) EXECUTE FUNCTION app.count_stored_bytes();

UPDATE app.users AS u
SET stored_bytes = coalesce((SELECT sum(r.size) FROM app.records AS r WHERE r.user_id = u.id), 0);

-- A duration must be a number of seconds: NaN passed `duration > 0` (PostgreSQL
-- orders NaN above every number), and a record holding it made GET /records
-- answer invalid JSON. Any already stored gets the CBR estimate from its size.
UPDATE app.records
SET duration = size * 8.0 / bitrate
WHERE size IS NOT NULL AND NOT (duration < 'Infinity');

ALTER TABLE app.records
    ADD CONSTRAINT duration_finite CHECK (duration < 'Infinity');
