-- The private schema: tables, their constraints and the triggers that keep
-- them consistent. The service's login role gets no rights here; it reaches
-- this data only through the SECURITY DEFINER functions of the `api` schema,
-- which db/apply.py recreates from db/functions/ on every run.

CREATE SCHEMA app;

REVOKE ALL ON SCHEMA app FROM PUBLIC;

CREATE TABLE app.users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username text NOT NULL
        CONSTRAINT username_is_trimmed CHECK (username = btrim(username))
        CONSTRAINT username_length CHECK (char_length(username) BETWEEN 1 AND 64)
        CONSTRAINT username_has_no_control_characters CHECK (username !~ '[[:cntrl:]]'),
    -- SHA-256 of the token's canonical text; the token itself is shown once
    -- and never stored.
    token_sha256 bytea NOT NULL
        CONSTRAINT token_sha256_length CHECK (octet_length(token_sha256) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX users_username_lower_key ON app.users (lower(username));

COMMENT ON TABLE app.users IS
    'People who upload recordings. Usernames are unique without regard to case.';

-- A record row is inserted when an upload begins (with its large object) and
-- completed when the MP3 is fully written. Until then the metadata columns are
-- NULL; the deferred trigger below refuses to commit a row in that state, so
-- an unfinished upload can never become visible to anyone.
CREATE TABLE app.records (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id bigint NOT NULL REFERENCES app.users (id) ON DELETE CASCADE,
    lo_oid oid NOT NULL UNIQUE,
    original_filename text NOT NULL
        CONSTRAINT original_filename_length CHECK (char_length(original_filename) BETWEEN 1 AND 255)
        CONSTRAINT original_filename_is_a_base_name CHECK (original_filename !~ '[/\\[:cntrl:]]'),
    size bigint CONSTRAINT size_positive CHECK (size > 0),
    duration double precision CONSTRAINT duration_positive CHECK (duration > 0),
    bitrate integer CONSTRAINT bitrate_positive CHECK (bitrate > 0),
    sample_rate integer CONSTRAINT sample_rate_positive CHECK (sample_rate > 0),
    channels smallint CONSTRAINT channels_mono_or_stereo CHECK (channels IN (1, 2)),
    sha256 bytea CONSTRAINT sha256_length CHECK (octet_length(sha256) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT metadata_all_or_nothing
        CHECK (num_nulls(size, duration, bitrate, sample_rate, channels, sha256) IN (0, 6))
);

CREATE INDEX records_user_id_created_at_idx ON app.records (user_id, created_at DESC);

COMMENT ON TABLE app.records IS
    'Converted MP3s. The bytes live in the large object lo_oid, unlinked with the row.';

-- A large object outlives its row unless someone unlinks it. Doing it in a
-- trigger covers every way a row can go: the api function, a cascade from
-- app.users, or an admin deleting rows by hand in pgAdmin.
CREATE FUNCTION app.unlink_record_large_object() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM lo_unlink(OLD.lo_oid);
    RETURN OLD;
END;
$$;

CREATE TRIGGER records_unlink_large_object
    AFTER DELETE ON app.records
    FOR EACH ROW EXECUTE FUNCTION app.unlink_record_large_object();

-- Runs at COMMIT: the row must by then carry its metadata (api.record_finish).
-- SECURITY DEFINER because at COMMIT it runs as the committing role, which
-- (the service) has no rights on app.
CREATE FUNCTION app.assert_record_finished() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- NEW is the row as it was when the event fired; read the current one.
    IF EXISTS (SELECT FROM app.records WHERE id = NEW.id AND size IS NULL) THEN
        RAISE EXCEPTION 'record % was begun but never finished', NEW.id
            USING ERRCODE = 'integrity_constraint_violation',
                  HINT = 'Call api.record_finish before COMMIT, or ROLLBACK.';
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER records_must_be_finished_at_commit
    AFTER INSERT OR UPDATE ON app.records
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION app.assert_record_finished();

REVOKE ALL ON FUNCTION app.unlink_record_large_object() FROM PUBLIC;
REVOKE ALL ON FUNCTION app.assert_record_finished() FROM PUBLIC;

-- The shape every api function returns for a record: what a client may see
-- (never lo_oid), with the download name derived from the original one.
CREATE VIEW app.record_info AS
SELECT
    id,
    user_id,
    -- 'song.wav' -> 'song.mp3', 'take.2' -> 'take.mp3', '.wav' stays '.wav.mp3'
    regexp_replace(original_filename, '(.)\.[^.]*$', '\1') || '.mp3' AS filename,
    original_filename,
    size,
    duration,
    bitrate,
    sample_rate,
    channels,
    sha256,
    created_at
FROM app.records
WHERE size IS NOT NULL;

COMMENT ON VIEW app.record_info IS
    'Finished records as clients see them; the return type of the api record functions.';
