/**
 * Reads byte_count bytes (at most 8 MiB) from byte offset from_byte of an
 * upload in progress, begun in this same transaction: how the service hashes
 * the MP3 a piece at a time before api.record_finish when it kept no copy of
 * its own (its header frame is written last, at its start, so it cannot be
 * hashed as it is appended).
 * Fewer bytes at the end, none past it.
 */
CREATE FUNCTION api.record_read_back(record_id uuid, from_byte bigint, byte_count integer)
RETURNS bytea
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF from_byte IS NULL OR from_byte < 0 OR byte_count IS NULL
        OR byte_count NOT BETWEEN 0 AND 8388608 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'Read from a byte offset of 0 or more, between 0 and 8388608 bytes at a time.';
    END IF;
    RETURN lo_get(app.upload_in_progress(record_id), from_byte, byte_count);
END;
$$;

COMMENT ON FUNCTION api.record_read_back(uuid, bigint, integer) IS
    'Reads a byte range (at most 8 MiB) of an upload in progress in this transaction.';
