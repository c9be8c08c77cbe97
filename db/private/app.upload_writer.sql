/**
 * For the api functions a PATCH writes with: the upload it claimed, locked,
 * while its claim is still the upload's latest. PT423 once another request has
 * claimed it (generation moved on): the older one writes nothing more.
 */
CREATE FUNCTION app.upload_writer(upload_id uuid, generation bigint) RETURNS app.uploads
    LANGUAGE plpgsql
    VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    the_upload app.uploads;
BEGIN
    SELECT * INTO the_upload FROM app.uploads AS u WHERE u.id = upload_id FOR UPDATE;
    IF NOT FOUND OR the_upload.record_id IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'PT404', MESSAGE = 'No such upload in progress.';
    END IF;
    IF the_upload.generation IS DISTINCT FROM upload_writer.generation THEN  -- a NULL one too
        RAISE EXCEPTION USING ERRCODE = 'PT423', MESSAGE = 'Another request now writes this upload.';
    END IF;
    RETURN the_upload;
END;
$$;

REVOKE ALL ON FUNCTION app.upload_writer(uuid, bigint) FROM PUBLIC;

COMMENT ON FUNCTION app.upload_writer(uuid, bigint) IS
    'The upload a PATCH claimed, locked, while that claim is the latest; PT423 once another took it.';
