/**
 * Completes an upload begun in this transaction with what the converter
 * measured, and returns the finished record. The size and the SHA-256 (the
 * download's ETag: what `sha256sum` prints for the downloaded file) are
 * computed here from the stored bytes, so they are true whoever calls this.
 * An empty object or a zero duration is PT422: there was no audio. PT413 when
 * the record would take its user past the storage quota (checked with the
 * user's row locked, so two uploads finishing at once cannot both slip in;
 * NO KEY UPDATE: it must not wait on the key-share lock every open upload's
 * foreign key holds, or two uploads of one user would deadlock).
 */
CREATE FUNCTION api.record_finish(
    record_id uuid,
    duration double precision,
    bitrate integer,
    sample_rate integer,
    channels integer
)
RETURNS SETOF app.record_info
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    object_id oid;
    owner_id bigint;
    descriptor integer;
    object_size bigint;
BEGIN
    object_id := app.upload_in_progress(record_id);
    SELECT r.user_id INTO owner_id FROM app.records AS r WHERE r.id = record_id;
    PERFORM FROM app.users AS u WHERE u.id = owner_id FOR NO KEY UPDATE;

    descriptor := lo_open(object_id, x'40000'::integer);  -- INV_READ
    object_size := lo_lseek64(descriptor, 0, 2);           -- SEEK_END
    PERFORM lo_close(descriptor);

    IF object_size = 0 OR coalesce(duration, 0) <= 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT422', MESSAGE = 'The recording holds no audio.';
    END IF;
    PERFORM app.assert_within_quota(owner_id, object_size);

    UPDATE app.records AS r
    SET size = object_size,
        duration = record_finish.duration,
        bitrate = record_finish.bitrate,
        sample_rate = record_finish.sample_rate,
        channels = record_finish.channels,
        sha256 = pg_catalog.sha256(lo_get(object_id)),
        -- A record exists from the moment it is complete, not from when its
        -- (possibly long) upload began.
        created_at = clock_timestamp()
    WHERE r.id = record_id;

    RETURN QUERY SELECT * FROM app.record_info AS i WHERE i.id = record_id;
END;
$$;

COMMENT ON FUNCTION api.record_finish(uuid, double precision, integer, integer, integer) IS
    'Completes an upload with its measured metadata; returns the finished record.';
