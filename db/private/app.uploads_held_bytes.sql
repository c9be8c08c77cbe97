/**
 * What the service's resumable uploads in progress hold in the database, all
 * users together, but `except_upload`'s (the one a checkpoint is writing counts
 * its new size itself): each one's MP3 so far, and the WAV bytes, header and
 * measurement it keeps to resume from (up to 16 MiB of WAV each, in
 * `wav_pending` and its pieces kept as sent). What the storage bound counts
 * beside the finished records.
 */
CREATE FUNCTION app.uploads_held_bytes(except_upload uuid DEFAULT NULL) RETURNS bigint
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(sum(p.mp3_bytes + app.upload_kept_bytes(p.wav_header, p.wav_pending, p.analysis)
                        + app.upload_bytes_in_pieces(p.id)), 0)::bigint
    FROM app.uploads AS p
    WHERE p.record_id IS NULL
      AND p.id IS DISTINCT FROM except_upload;
$$;

REVOKE ALL ON FUNCTION app.uploads_held_bytes(uuid) FROM PUBLIC;

COMMENT ON FUNCTION app.uploads_held_bytes(uuid) IS
    'The bytes all unfinished uploads (but except_upload) hold: MP3 so far, WAV header, pending bytes and pieces, measurement.';
