/**
 * Writes bytes over part of an upload in progress (begun in this same
 * transaction), within what was already appended; returns nothing. The
 * service uses it to put the MP3's Xing/LAME header frame into the room it
 * left after the ID3 tag, once the stream has ended and the frame is known.
 */
CREATE FUNCTION api.record_overwrite(record_id uuid, at bigint, chunk bytea)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    object_id oid;
    descriptor integer;
BEGIN
    object_id := app.upload_in_progress(record_id);

    descriptor := lo_open(object_id, x'60000'::integer);  -- INV_READ | INV_WRITE
    IF at IS NULL OR at < 0 OR chunk IS NULL
        OR at + octet_length(chunk) > lo_lseek64(descriptor, 0, 2) THEN  -- SEEK_END
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'Overwrite only bytes already written.';
    END IF;
    PERFORM lo_lseek64(descriptor, at, 0);  -- SEEK_SET
    PERFORM lowrite(descriptor, chunk);
    PERFORM lo_close(descriptor);
END;
$$;

COMMENT ON FUNCTION api.record_overwrite(uuid, bigint, bytea) IS
    'Overwrites already written bytes of an upload in progress (the MP3 header frame).';
