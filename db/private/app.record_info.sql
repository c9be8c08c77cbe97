/**
 * Finished records as clients see them: what a client may see (never lo_oid),
 * with the download name derived from the original one. The return type of
 * the api record functions.
 */
CREATE VIEW app.record_info AS
SELECT
    id,
    user_id,
    -- 'song.wav' -> 'song.mp3', 'take.2' -> 'take.mp3', '.wav' stays '.wav.mp3'
    regexp_replace(original_filename, '(.)\.[^.]*$', '\1') || '.mp3' AS filename,
    original_filename,
    size,
    duration,
    bitrate,
    sample_rate,
    channels,
    sha256,
    created_at,
    loudness,
    loudness_range,
    true_peak,
    waveform IS NOT NULL AS has_waveform,
    -- For api.records_list's cursor: the records after this one.
    app.listing_cursor(created_at, id) AS cursor
FROM app.records
WHERE size IS NOT NULL;

COMMENT ON VIEW app.record_info IS
    'Finished records as clients see them; the return type of the api record functions.';
