/**
 * Appends a chunk of MP3 bytes to an upload begun by api.record_begin in this
 * same transaction, and returns the size written so far. Unfinished records
 * are never committed, so only the transaction that began one can see it:
 * nobody can write into another upload or into a finished record (PT404).
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
    descriptor integer;
    end_of_object bigint;
BEGIN
    object_id := app.upload_in_progress(record_id);

    descriptor := lo_open(object_id, x'20000'::integer);  -- INV_WRITE
    end_of_object := lo_lseek64(descriptor, 0, 2);         -- SEEK_END
    PERFORM lowrite(descriptor, coalesce(chunk, ''::bytea));
    PERFORM lo_close(descriptor);

    RETURN end_of_object + coalesce(octet_length(chunk), 0);
END;
$$;

COMMENT ON FUNCTION api.record_append(uuid, bytea) IS
    'Appends MP3 bytes to an upload in progress; returns the bytes written so far.';
