/**
 * For the api functions that write into an upload in progress (record_append,
 * record_overwrite, record_finish): the large object of a record begun in this
 * transaction and not yet finished. Unfinished records are never committed,
 * so only the transaction that began one can find it.
 */
CREATE FUNCTION app.upload_in_progress(record_id uuid) RETURNS oid
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    object_id oid;
BEGIN
    SELECT r.lo_oid INTO object_id
    FROM app.records AS r
    WHERE r.id = record_id AND r.size IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'PT404', MESSAGE = 'No upload in progress with this id.';
    END IF;
    RETURN object_id;
END;
$$;

REVOKE ALL ON FUNCTION app.upload_in_progress(uuid) FROM PUBLIC;

COMMENT ON FUNCTION app.upload_in_progress(uuid) IS
    'The large object of an upload begun in this transaction; PT404 otherwise.';
