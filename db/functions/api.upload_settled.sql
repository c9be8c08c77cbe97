/**
 * A PATCH (which claimed `generation`) has stored its last checkpoint, or
 * failed: it is no longer at work on the upload, and a HEAD waiting for it
 * (api.upload_open's patch_busy_s) answers at once. Nothing changes once
 * another request has claimed the upload: that one is at work now.
 */
CREATE FUNCTION api.upload_settled(upload_id uuid, generation bigint)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE app.uploads AS u
    SET patch_busy_until = NULL
    WHERE u.id = upload_settled.upload_id AND u.generation = upload_settled.generation;
END;
$$;

COMMENT ON FUNCTION api.upload_settled(uuid, bigint) IS
    'A PATCH is done with an upload (its last checkpoint stored, or it failed): HEAD need not wait for it.';
