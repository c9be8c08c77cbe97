/**
 * Appends a chunk of MP3 bytes to an upload begun by api.record_begin in this
 * same transaction, and returns the size written so far. Unfinished records
 * are never committed, so only the transaction that began one can see it:
 * nobody can write into another upload or into a finished record (PT404).
 * PT413 as soon as the upload would take its user past the storage quota,
 * PT507 as soon as it would take the service past its storage bound.
 */
CREATE FUNCTION api.record_append(record_id uuid, chunk bytea)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    object_id oid;
    owner_id bigint;
    descriptor integer;
    written bigint;
BEGIN
    object_id := app.upload_in_progress(record_id);

    descriptor := lo_open(object_id, x'20000'::integer);  -- INV_WRITE
    written := lo_lseek64(descriptor, 0, 2) + coalesce(octet_length(chunk), 0);  -- SEEK_END
    SELECT r.user_id INTO owner_id FROM app.records AS r WHERE r.id = record_id;
    PERFORM app.assert_within_quota(owner_id, written);
    PERFORM app.assert_within_storage_bound(written);
    PERFORM lowrite(descriptor, coalesce(chunk, ''::bytea));
    PERFORM lo_close(descriptor);

    RETURN written;
END;
$$;

COMMENT ON FUNCTION api.record_append(uuid, bytea) IS
    'Appends MP3 bytes to an upload in progress; returns the bytes written so far.';
