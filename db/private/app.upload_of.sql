/**
 * For the api functions a client calls about a resumable upload: the upload,
 * when the credentials are the user's and it is theirs (PT404 for another
 * user's, as for a missing one), not past its expiry unless finished (PT410).
 */
CREATE FUNCTION app.upload_of(user_id bigint, token text, upload_id uuid) RETURNS app.uploads
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    the_upload app.uploads;
BEGIN
    PERFORM FROM api.user_check(user_id, token);
    SELECT * INTO the_upload FROM app.uploads AS u WHERE u.id = upload_id AND u.user_id = upload_of.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'PT404', MESSAGE = 'No such upload.';
    END IF;
    IF the_upload.record_id IS NULL AND the_upload.expires_at <= now() THEN
        RAISE EXCEPTION USING ERRCODE = 'PT410', MESSAGE = 'The upload has expired.';
    END IF;
    RETURN the_upload;
END;
$$;

REVOKE ALL ON FUNCTION app.upload_of(bigint, text, uuid) FROM PUBLIC;

COMMENT ON FUNCTION app.upload_of(bigint, text, uuid) IS
    'The user''s upload, checked: PT401 credentials, PT404 absent or another''s, PT410 expired.';
