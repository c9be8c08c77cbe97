/**
 * Who an authenticated user is and what they store: their name, finished
 * records, their MP3 bytes, the MP3 bytes of their resumable uploads in
 * progress, and the quota both count against (0: none).
 */
CREATE FUNCTION api.user_storage(user_id bigint, token text)
RETURNS TABLE (username text, records bigint, bytes bigint, quota_bytes bigint, uploading_bytes bigint)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM FROM api.user_check(user_id, token);

    RETURN QUERY
    SELECT
        u.username,
        (SELECT count(*) FROM app.records AS r WHERE r.user_id = user_storage.user_id AND r.size IS NOT NULL),
        u.stored_bytes,
        s.user_quota_bytes,
        app.uploading_bytes(u.id)
    FROM app.users AS u, app.settings AS s
    WHERE u.id = user_storage.user_id;
END;
$$;

COMMENT ON FUNCTION api.user_storage(bigint, text) IS
    'The user''s name, records, their bytes, the storage quota (0: none), and the bytes of their uploads in progress.';
