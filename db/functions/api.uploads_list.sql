/**
 * The user's resumable uploads, newest first: unfinished ones with how far
 * they are and when they expire, finished ones with their record, until they
 * expire. For psql and the web page.
 */
CREATE FUNCTION api.uploads_list(user_id bigint, token text)
RETURNS TABLE (
    id uuid,
    filename text,
    upload_offset bigint,
    upload_length bigint,
    mp3_bytes bigint,
    created_at timestamptz,
    expires_at timestamptz,
    record_id uuid
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM FROM api.user_check(user_id, token);
    RETURN QUERY
    SELECT u.id, u.filename, u.upload_offset, u.upload_length, u.mp3_bytes, u.created_at, u.expires_at, u.record_id
    FROM app.uploads AS u
    WHERE u.user_id = uploads_list.user_id AND (u.record_id IS NOT NULL OR u.expires_at > now())
    ORDER BY u.created_at DESC, u.id;
END;
$$;

COMMENT ON FUNCTION api.uploads_list(bigint, text) IS
    'The user''s resumable uploads: offset, length and expiry, or the record once finished.';
