/**
 * A resumable upload as its owner sees it (tus HEAD, GET): how far it is (the
 * WAV's bytes whose MP3 is stored), its length (NULL while deferred), expiry,
 * file name and options, its record once finished, and for how many seconds
 * more a PATCH is at work on it (0: none is), whose last checkpoint may still
 * move the offset on. PT404, PT410: see app.upload_of.
 */
CREATE FUNCTION api.upload_open(user_id bigint, token text, upload_id uuid)
RETURNS TABLE (
    upload_offset bigint,
    upload_length bigint,
    expires_at timestamptz,
    filename text,
    options jsonb,
    record_id uuid,
    patch_busy_s double precision
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    the_upload app.uploads := app.upload_of(user_id, token, upload_id);
BEGIN
    RETURN QUERY SELECT the_upload.upload_offset, the_upload.upload_length, the_upload.expires_at, the_upload.filename,
                        the_upload.options, the_upload.record_id,
                        greatest(0, extract(epoch FROM the_upload.patch_busy_until - now()))::double precision;
END;
$$;

COMMENT ON FUNCTION api.upload_open(bigint, text, uuid) IS
    'A resumable upload''s offset, length, expiry, file name, options, record (once finished) and PATCH at work.';
