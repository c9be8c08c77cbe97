/**
 * The WAV bytes an upload keeps as sent in pieces (app.upload_pieces, written by
 * api.upload_append), beside those of its last checkpoint (`wav_pending`).
 */
CREATE FUNCTION app.upload_bytes_in_pieces(upload_id uuid) RETURNS bigint
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(sum(octet_length(q.piece)), 0)::bigint
    FROM app.upload_pieces AS q
    WHERE q.upload_id = upload_bytes_in_pieces.upload_id;
$$;

REVOKE ALL ON FUNCTION app.upload_bytes_in_pieces(uuid) FROM PUBLIC;

COMMENT ON FUNCTION app.upload_bytes_in_pieces(uuid) IS
    'The WAV bytes an upload keeps as sent in pieces, beside wav_pending.';
