/**
 * A size as the service's messages state it: in GiB, MiB or KiB to one
 * decimal, or in bytes below a KiB, so that a limit set small by hand (in
 * psql, pgAdmin) is not stated as "0.0 GiB". The unit is the one the size
 * rounds to at least 1.0 of: 1048575 bytes is "1.0 MiB", not "1024.0 KiB".
 */
CREATE FUNCTION app.size_in_words(size bigint) RETURNS text
    LANGUAGE sql
    IMMUTABLE
    SET search_path = pg_catalog, pg_temp
RETURN CASE
    WHEN size >= 1023.95 * 1048576 THEN round(size / 1073741824.0, 1)::text || ' GiB'
    WHEN size >= 1023.95 * 1024 THEN round(size / 1048576.0, 1)::text || ' MiB'
    WHEN size >= 1024 THEN round(size / 1024.0, 1)::text || ' KiB'
    WHEN size = 1 THEN '1 byte'
    ELSE size::text || ' bytes'
END;

REVOKE ALL ON FUNCTION app.size_in_words(bigint) FROM PUBLIC;

COMMENT ON FUNCTION app.size_in_words(bigint) IS 'A size in GiB, MiB, KiB or bytes, for messages.';
