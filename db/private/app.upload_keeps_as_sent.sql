/**
 * Whether a PATCH of `sending` bytes at the upload's offset keeps them as they
 * were sent (api.upload_append) rather than converting them. Converting a PATCH
 * starts an FFmpeg (about 60 ms of CPU) and rewrites the upload's pending bytes
 * and measurement whole: worth it for a few seconds of audio, not for a client
 * sending in small chunks, nor for one sending a byte a request. So one keeps
 * them while the upload's unconverted bytes (`wav_pending` and the pieces kept
 * before) come to 2 MiB at most with them, about 12 s of CD audio (the PATCH that
 * converts them encodes that in about 0.1 s), and it has fewer than 64 pieces
 * (each a row that every later claim reads back). Only once the WAV's header is
 * stored (the first PATCH converts, to learn the samples' format), and never
 * the upload's last bytes: the PATCH that brings them makes the record.
 */
CREATE FUNCTION app.upload_keeps_as_sent(the_upload app.uploads, sending bigint) RETURNS boolean
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        the_upload.wav_header IS NOT NULL
            AND the_upload.progress IS NOT NULL
            AND the_upload.record_id IS NULL
            AND sending >= 0
            AND (the_upload.upload_length IS NULL OR the_upload.upload_offset + sending < the_upload.upload_length)
            AND (SELECT count(*) FROM app.upload_pieces AS q WHERE q.upload_id = the_upload.id) < 64
            AND coalesce(octet_length(the_upload.wav_pending), 0) + app.upload_bytes_in_pieces(the_upload.id) + sending
                <= 2097152,
        false
    );
$$;

REVOKE ALL ON FUNCTION app.upload_keeps_as_sent(app.uploads, bigint) FROM PUBLIC;

COMMENT ON FUNCTION app.upload_keeps_as_sent(app.uploads, bigint) IS
    'Whether a PATCH of that many bytes keeps them as sent (under 2 MiB unconverted, 64 pieces) rather than converting.';
