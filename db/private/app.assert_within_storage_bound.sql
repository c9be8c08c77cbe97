/**
 * For the api functions that store bytes: PT507 when the service's finished
 * records, what its resumable uploads in progress hold, and `adding` bytes
 * would pass its storage bound (app.settings; STORAGE_MAX_GB). Accounts are
 * free, so uploads left unfinished count too, or they would be room without
 * a bound. Reads the records' running total, never the records. An upload in
 * progress that is being written passes its own id: its new size is in `adding`.
 */
CREATE FUNCTION app.assert_within_storage_bound(adding bigint, writing uuid DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bound bigint;
    used bigint;
BEGIN
    SELECT s.storage_max_bytes INTO bound FROM app.settings AS s;
    IF coalesce(bound, 0) = 0 THEN
        RETURN;
    END IF;
    SELECT s.bytes + app.uploads_held_bytes(writing) INTO used FROM app.storage AS s;
    IF used + adding > bound THEN
        RAISE EXCEPTION USING ERRCODE = 'PT507',
            MESSAGE = format('The service''s storage is full (its limit is %s): no upload can be stored'
                             ' until records are deleted.', app.size_in_words(bound));
    END IF;
END;
$$;

REVOKE ALL ON FUNCTION app.assert_within_storage_bound(bigint, uuid) FROM PUBLIC;

COMMENT ON FUNCTION app.assert_within_storage_bound(bigint, uuid) IS
    'Raises PT507 when all finished records, unfinished uploads (but writing) and adding would pass app.settings.storage_max_bytes.';
