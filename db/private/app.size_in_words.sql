/**
 * A size as the service's messages state it: in GiB, MiB or KiB to one
 * decimal, or in bytes below a KiB, so that a limit set small by hand (in
 * psql, pgAdmin) is not stated as "0.0 GiB".
 */
CREATE FUNCTION app.size_in_words(size bigint) RETURNS text
    LANGUAGE sql
    IMMUTABLE
    SET search_path = pg_catalog, pg_temp
RETURN CASE
    WHEN size >= 1073741824 THEN round(size / 1073741824.0, 1) || ' GiB'
    WHEN size >= 1048576 THEN round(size / 1048576.0, 1) || ' MiB'
    WHEN size >= 1024 THEN round(size / 1024.0, 1) || ' KiB'
    ELSE size || ' bytes'
END;

REVOKE ALL ON FUNCTION app.size_in_words(bigint) FROM PUBLIC;

COMMENT ON FUNCTION app.size_in_words(bigint) IS 'A size in GiB, MiB, KiB or bytes, for messages.';
