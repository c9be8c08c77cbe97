-- Resumable uploads (tus, handlers/uploads.py): an upload in progress across
-- requests, on any replica. Its MP3 grows in a large object of its own, each
-- checkpoint one short transaction; the converter's state at the last one is
-- `progress` (converter/resume.py), the WAV's header is kept apart (written
-- once). When the last byte is in, the large object becomes a record's.

CREATE TABLE app.uploads (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id bigint NOT NULL REFERENCES app.users (id) ON DELETE CASCADE,
    lo_oid oid,  -- the MP3 so far; NULL once it is a record's
    filename text NOT NULL,
    options jsonb NOT NULL,  -- what POST /record takes, as the client gave it (Upload-Metadata)
    upload_length bigint  -- the WAV's bytes (Upload-Length); NULL while the client defers it
        CONSTRAINT upload_length_not_negative CHECK (upload_length >= 0),
    upload_offset bigint NOT NULL DEFAULT 0  -- the WAV's bytes whose MP3 is stored: never decreases
        CONSTRAINT upload_offset_within_length CHECK (upload_offset >= 0 AND upload_offset <= upload_length),
    wav_header bytea,  -- the WAV's bytes before its first sample, once they are in
    progress jsonb,  -- the converter's checkpoint at upload_offset
    mp3_bytes bigint NOT NULL DEFAULT 0,  -- the MP3 so far: counted against the quota and the bound
    -- Taken anew by every PATCH: a checkpoint of an older one (a replica that lost its
    -- client, or died and came back) no longer matches, and writes nothing.
    generation bigint NOT NULL DEFAULT 0,
    record_id uuid REFERENCES app.records (id) ON DELETE SET NULL,  -- once finished
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX uploads_user_id_idx ON app.uploads (user_id);
CREATE INDEX uploads_expires_at_idx ON app.uploads (expires_at);

COMMENT ON TABLE app.uploads IS
    'Resumable uploads in progress (tus): the MP3 so far in lo_oid, the converter''s checkpoint in progress.';

-- As for records: a large object goes with its row, however the row goes.
CREATE FUNCTION app.unlink_upload_large_object() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF OLD.lo_oid IS NOT NULL THEN
        PERFORM lo_unlink(OLD.lo_oid);
    END IF;
    RETURN OLD;
END;
$$;

REVOKE ALL ON FUNCTION app.unlink_upload_large_object() FROM PUBLIC;

CREATE TRIGGER uploads_unlink_large_object
    AFTER DELETE ON app.uploads
    FOR EACH ROW EXECUTE FUNCTION app.unlink_upload_large_object();
