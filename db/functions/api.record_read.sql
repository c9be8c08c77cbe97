/**
 * Reads byte_count bytes of a record's MP3 from byte offset from_byte (fewer
 * at the end). Same rule as api.record_open: the user id must own the record
 * (PT404 otherwise). Reads are capped at 8 MiB so one call never holds a whole
 * large file in memory; read a big file as a series of ranges.
 */
CREATE FUNCTION api.record_read(
    record_id uuid,
    user_id bigint,
    from_byte bigint,
    byte_count integer
)
RETURNS bytea
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    object_id oid;
BEGIN
    IF from_byte IS NULL OR from_byte < 0 OR byte_count IS NULL
        OR byte_count NOT BETWEEN 0 AND 8388608 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'Read from a byte offset of 0 or more, between 0 and 8388608 bytes at a time.';
    END IF;

    SELECT r.lo_oid INTO object_id
    FROM app.records AS r
    WHERE r.id = record_id AND r.user_id = record_read.user_id AND r.size IS NOT NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'PT404', MESSAGE = 'No such record.';
    END IF;

    RETURN lo_get(object_id, from_byte, byte_count);
END;
$$;

COMMENT ON FUNCTION api.record_read(uuid, bigint, bigint, integer) IS
    'Reads a byte range (at most 8 MiB) of a record''s MP3.';
