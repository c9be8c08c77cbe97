/**
 * Stores what the converter measured of an upload in progress (begun in this
 * same transaction, before api.record_finish): its waveform (audiowaveform's
 * .dat, version 2; at most 1 MiB) and its loudness (LUFS, LU, dBTP; NULL for
 * none: silence, or too short to gate). PT400 for a value that is no finite
 * number, a waveform that is no .dat of version 2, or one past 1 MiB.
 */
CREATE FUNCTION api.record_measure(
    record_id uuid,
    waveform bytea,
    loudness double precision,
    loudness_range double precision,
    true_peak double precision
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM app.upload_in_progress(record_id);
    IF NOT (coalesce(loudness, 0) BETWEEN -1000 AND 1000
            AND coalesce(loudness_range, 0) BETWEEN 0 AND 1000
            AND coalesce(true_peak, 0) BETWEEN -1000 AND 1000) THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'Loudness figures must be finite numbers, or null.';
    END IF;
    IF waveform IS NOT NULL AND (octet_length(waveform) > 1048576 OR octet_length(waveform) < 24
                                 OR substring(waveform FROM 1 FOR 4) <> '\x02000000'::bytea) THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'A waveform is audiowaveform''s .dat of version 2, of at most 1 MiB.';
    END IF;
    UPDATE app.records AS r
    SET waveform = record_measure.waveform,
        loudness = record_measure.loudness,
        loudness_range = record_measure.loudness_range,
        true_peak = record_measure.true_peak
    WHERE r.id = record_id;
END;
$$;

COMMENT ON FUNCTION api.record_measure(uuid, bytea, double precision, double precision, double precision) IS
    'Stores an upload in progress''s waveform and loudness.';
