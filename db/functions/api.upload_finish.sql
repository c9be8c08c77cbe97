/**
 * Ends a resumable upload in one call, for its last PATCH (which claimed
 * `generation`) once every WAV byte is in: `chunk`, the MP3's last bytes, is
 * written at byte `at` as api.upload_checkpoint writes it (the offset becomes
 * the upload's length), the MP3 is made a record as api.upload_record_begin
 * makes it, and the record is finished by api.record_finish with the rest of
 * the arguments. Each call's checks and errors are its own: PT413 or PT507
 * past the quota or the storage bound (the checkpoint's check, then the
 * record's), PT422 for no audio, and with no `sha256` the database hashes
 * the MP3 itself, up to 64 MiB (PT400 beyond). Returns the finished record;
 * PT423 once another request claimed the upload, PT404 once it is finished or
 * gone, PT400 while its length is not known. Any error leaves the upload as it
 * was.
 *
 * The service calls it when it hashed its own copy of the MP3 (`sha256`): the
 * upload then ends in one round trip to the database instead of five (BEGIN,
 * the three calls, COMMIT), 120 ms less with the database 30 ms away. Without
 * a copy it reads the MP3 back between api.upload_record_begin and
 * api.record_finish, in one transaction, as a psql user may too. Being one
 * statement, it commits with its answer: a service that gave up waiting for
 * that answer (503) may find the upload finished, as HEAD then says.
 */
CREATE FUNCTION api.upload_finish(
    upload_id uuid,
    generation bigint,
    at bigint,
    chunk bytea,
    lifetime_s double precision,
    duration double precision,
    bitrate integer,
    sample_rate integer,
    channels integer,
    sha256 bytea DEFAULT NULL,
    header_at bigint DEFAULT NULL,
    header_frame bytea DEFAULT NULL,
    waveform bytea DEFAULT NULL,
    loudness double precision DEFAULT NULL,
    loudness_range double precision DEFAULT NULL,
    true_peak double precision DEFAULT NULL
)
RETURNS SETOF app.record_info
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    the_upload app.uploads := app.upload_writer(upload_id, generation);
    new_id uuid;
BEGIN
    IF the_upload.upload_length IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'The upload''s length is not known yet: it cannot be finished.';
    END IF;
    PERFORM api.upload_checkpoint(
        upload_id, generation, at, chunk, the_upload.upload_length, '{}'::jsonb, NULL, lifetime_s
    );
    new_id := api.upload_record_begin(upload_id, generation);
    RETURN QUERY
    SELECT *
    FROM api.record_finish(
        new_id, duration, bitrate, sample_rate, channels, sha256, header_at, header_frame,
        waveform, loudness, loudness_range, true_peak
    );
END;
$$;

COMMENT ON FUNCTION api.upload_finish(
    uuid, bigint, bigint, bytea, double precision, double precision, integer, integer, integer,
    bytea, bigint, bytea, bytea, double precision, double precision, double precision
) IS 'Ends a resumable upload: its last MP3 bytes written, the MP3 made a record and finished; returns it.';
