/**
 * For the api functions that store bytes for a user: PT413 when the user's
 * finished records, the MP3s of their resumable uploads in progress, and
 * `adding` bytes would pass the quota (app.settings). An upload in progress
 * that is being written passes its own id: its new size is in `adding`.
 */
CREATE FUNCTION app.assert_within_quota(user_id bigint, adding bigint, writing uuid DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    quota bigint;
    used bigint;
BEGIN
    SELECT s.user_quota_bytes INTO quota FROM app.settings AS s;
    IF coalesce(quota, 0) = 0 THEN
        RETURN;
    END IF;
    SELECT u.stored_bytes + app.uploading_bytes(u.id, writing) INTO used
    FROM app.users AS u
    WHERE u.id = assert_within_quota.user_id;
    IF used + adding > quota THEN
        RAISE EXCEPTION USING ERRCODE = 'PT413',
            MESSAGE = format('This upload would take your storage past its quota of %s (%s used).',
                             app.size_in_words(quota), app.size_in_words(used));
    END IF;
END;
$$;

REVOKE ALL ON FUNCTION app.assert_within_quota(bigint, bigint, uuid) FROM PUBLIC;

COMMENT ON FUNCTION app.assert_within_quota(bigint, bigint, uuid) IS
    'Raises PT413 when the user''s records, uploads in progress (but writing) and adding would pass app.settings.user_quota_bytes.';
