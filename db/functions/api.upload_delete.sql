/**
 * Ends a resumable upload for its owner (tus termination): the upload and its
 * MP3 so far are gone, and a PATCH still writing it writes nothing more. A
 * finished upload's record stays (api.record_delete deletes records). PT404,
 * PT410: see app.upload_of.
 */
CREATE FUNCTION api.upload_delete(user_id bigint, token text, upload_id uuid)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM app.uploads AS u
    WHERE u.id = (app.upload_of(upload_delete.user_id, upload_delete.token, upload_delete.upload_id)).id;
END;
$$;

COMMENT ON FUNCTION api.upload_delete(bigint, text, uuid) IS
    'Ends a resumable upload and drops its MP3 so far.';
