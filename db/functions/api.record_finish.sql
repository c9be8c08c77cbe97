/**
 * Completes an upload begun in this transaction with what the converter
 * measured, and returns the finished record. The size is computed here from
 * the stored bytes, so it is true whoever calls this.
 *
 * sha256 is the MP3's SHA-256 (the download's ETag: what `sha256sum` prints
 * for the downloaded file). PostgreSQL can hash only a whole value, which for a
 * 4-hour MP3 takes over a GB of one backend's memory, so the service passes
 * what it measured reading the upload back a piece at a time
 * (api.record_read_back); it is the caller's word, like every byte it wrote,
 * and the download cache admits a file only when its bytes hash to it. NULL:
 * computed here, for an MP3 of at most 64 MiB (PT400 beyond).
 *
 * tail, the MP3's last bytes, is appended first, as api.record_append appends
 * it (its quota and storage checks too). header_at and header_frame, given
 * together, are written next as api.record_overwrite writes them (the MP3's
 * Xing/LAME header frame); when any
 * of waveform, loudness, loudness_range and true_peak is given, all four are
 * stored as api.record_measure stores them (one left out is stored as none).
 * The service passes all of it here: when it hashed its own copy of the MP3,
 * everything an upload stores once its encoders end takes two round trips to
 * the database, this call and the COMMIT. Called with six arguments, it
 * finishes what is there.
 *
 * An empty object or a zero duration is PT422: there was no audio; a duration
 * that is no finite number is PT400. PT413 when the record would take its user
 * past the storage quota, PT507 the service past its storage bound: checked
 * with the service's totals and the user's row locked (in that order, the
 * order the trigger that counts them updates them), so two uploads finishing
 * at once cannot both slip in. The user's lock is NO KEY UPDATE: it must not
 * wait on the key-share lock every open upload's foreign key holds, or two
 * uploads of one user would deadlock.
 */
CREATE FUNCTION api.record_finish(
    record_id uuid,
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
    true_peak double precision DEFAULT NULL,
    tail bytea DEFAULT NULL
)
RETURNS SETOF app.record_info
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    largest_hashed_here constant bigint := 64 * 1048576;
    object_id oid;
    owner_id bigint;
    descriptor integer;
    object_size bigint;
    digest bytea := record_finish.sha256;
BEGIN
    IF (header_at IS NULL) <> (header_frame IS NULL) THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'Pass header_at and header_frame together, or neither.';
    END IF;
    IF tail IS NOT NULL THEN
        PERFORM api.record_append(record_id, tail);
    END IF;
    IF header_frame IS NOT NULL THEN
        PERFORM api.record_overwrite(record_id, header_at, header_frame);
    END IF;
    IF num_nonnulls(waveform, loudness, loudness_range, true_peak) > 0 THEN
        PERFORM api.record_measure(record_id, waveform, loudness, loudness_range, true_peak);
    END IF;
    object_id := app.upload_in_progress(record_id);
    SELECT r.user_id INTO owner_id FROM app.records AS r WHERE r.id = record_id;
    PERFORM FROM app.storage FOR UPDATE;
    PERFORM FROM app.users AS u WHERE u.id = owner_id FOR NO KEY UPDATE;

    descriptor := lo_open(object_id, x'40000'::integer);  -- INV_READ
    object_size := lo_lseek64(descriptor, 0, 2);           -- SEEK_END
    PERFORM lo_close(descriptor);

    IF object_size = 0 OR coalesce(duration, 0) <= 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT422', MESSAGE = 'The recording holds no audio.';
    END IF;
    -- NaN compares above every number, so `<= 0` lets it through.
    IF NOT duration < 'Infinity' THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'The duration must be a finite number of seconds.';
    END IF;
    IF digest IS NULL AND object_size > largest_hashed_here THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'Pass the MP3''s SHA-256: the database hashes at most 64 MiB itself.';
    END IF;
    IF octet_length(digest) <> 32 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'A SHA-256 has 32 bytes.';
    END IF;
    PERFORM app.assert_within_quota(owner_id, object_size);
    PERFORM app.assert_within_storage_bound(object_size);

    UPDATE app.records AS r
    SET size = object_size,
        duration = record_finish.duration,
        bitrate = record_finish.bitrate,
        sample_rate = record_finish.sample_rate,
        channels = record_finish.channels,
        sha256 = coalesce(digest, pg_catalog.sha256(lo_get(object_id))),
        -- A record exists from the moment it is complete, not from when its
        -- (possibly long) upload began.
        created_at = clock_timestamp()
    WHERE r.id = record_id;

    RETURN QUERY SELECT * FROM app.record_info AS i WHERE i.id = record_id;
END;
$$;

COMMENT ON FUNCTION api.record_finish(
    uuid, double precision, integer, integer, integer, bytea,
    bigint, bytea, bytea, double precision, double precision, double precision, bytea
) IS 'Completes an upload with its last bytes, metadata, SHA-256, header frame and measurements; returns the record.';
