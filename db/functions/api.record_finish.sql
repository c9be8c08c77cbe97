/**
 * Completes an upload begun in this transaction with what the converter
 * measured, and returns the finished record. The size is read from the large
 * object itself; the SHA-256 (the download's ETag) is the caller's when given,
 * as the service hashes while it streams, else computed here from the bytes.
 * An empty object or a zero duration is PT422: there was no audio.
 */
CREATE FUNCTION api.record_finish(
    record_id uuid,
    duration double precision,
    bitrate integer,
    sample_rate integer,
    channels integer,
    sha256 bytea DEFAULT NULL
)
RETURNS SETOF app.record_info
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    object_id oid;
    descriptor integer;
    object_size bigint;
BEGIN
    object_id := app.upload_in_progress(record_id);

    descriptor := lo_open(object_id, x'40000'::integer);  -- INV_READ
    object_size := lo_lseek64(descriptor, 0, 2);           -- SEEK_END
    PERFORM lo_close(descriptor);

    IF object_size = 0 OR coalesce(duration, 0) <= 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT422', MESSAGE = 'The recording holds no audio.';
    END IF;

    UPDATE app.records AS r
    SET size = object_size,
        duration = record_finish.duration,
        bitrate = record_finish.bitrate,
        sample_rate = record_finish.sample_rate,
        channels = record_finish.channels,
        sha256 = coalesce(record_finish.sha256, pg_catalog.sha256(lo_get(object_id))),
        -- A record exists from the moment it is complete, not from when its
        -- (possibly long) upload began.
        created_at = clock_timestamp()
    WHERE r.id = record_id;

    RETURN QUERY SELECT * FROM app.record_info AS i WHERE i.id = record_id;
END;
$$;

COMMENT ON FUNCTION api.record_finish(uuid, double precision, integer, integer, integer, bytea) IS
    'Completes an upload with its measured metadata; returns the finished record.';
