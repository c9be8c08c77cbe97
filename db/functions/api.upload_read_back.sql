/**
 * Reads byte_count bytes (at most 8 MiB) from byte offset from_byte of the MP3
 * of an upload a PATCH claimed (`generation`): the frames a resume joins onto,
 * and the frame positions of the seek table at the end. PT423 once another
 * request has claimed it.
 */
CREATE FUNCTION api.upload_read_back(upload_id uuid, generation bigint, from_byte bigint, byte_count integer)
RETURNS bytea
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    the_upload app.uploads := app.upload_writer(upload_id, generation);
BEGIN
    IF from_byte IS NULL OR from_byte < 0 OR byte_count IS NULL OR byte_count NOT BETWEEN 0 AND 8388608 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'Read from a byte offset of 0 or more, between 0 and 8388608 bytes at a time.';
    END IF;
    RETURN lo_get(the_upload.lo_oid, from_byte, byte_count);
END;
$$;

COMMENT ON FUNCTION api.upload_read_back(uuid, bigint, bigint, integer) IS
    'Reads a byte range (at most 8 MiB) of the MP3 of an upload a PATCH claimed.';
