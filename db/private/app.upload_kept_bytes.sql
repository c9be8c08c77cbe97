/**
 * The bytes an upload in progress keeps beside its MP3 to resume from: the WAV's
 * header, the WAV bytes after the converter's resume point, the measurement so
 * far (octet_length reads a stored value's size without reading the value).
 */
CREATE FUNCTION app.upload_kept_bytes(wav_header bytea, wav_pending bytea, analysis bytea) RETURNS bigint
    LANGUAGE sql
    IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(octet_length(wav_header), 0)::bigint
         + coalesce(octet_length(wav_pending), 0)
         + coalesce(octet_length(analysis), 0);
$$;

REVOKE ALL ON FUNCTION app.upload_kept_bytes(bytea, bytea, bytea) FROM PUBLIC;

COMMENT ON FUNCTION app.upload_kept_bytes(bytea, bytea, bytea) IS
    'The bytes an unfinished upload keeps beside its MP3: WAV header, pending WAV bytes, measurement.';
