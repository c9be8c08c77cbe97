-- Every record's waveform and loudness, measured from its samples as they
-- streamed through the converter (converter/analysis.py): the peaks in
-- audiowaveform's binary format (version 2, 8-bit), served by GET
-- /record/waveform; integrated loudness, loudness range and true peak per
-- ITU-R BS.1770-4 / EBU R128, shown with the record. NULL: not measured (the
-- service's AUDIO_ANALYSIS was off, or the record predates this), or, for the
-- loudness, nothing to measure (silence, too short).

ALTER TABLE app.records
    ADD COLUMN waveform bytea,
    ADD COLUMN loudness double precision  -- LUFS
        CONSTRAINT loudness_finite CHECK (loudness > '-Infinity' AND loudness < 'Infinity'),
    ADD COLUMN loudness_range double precision  -- LU
        CONSTRAINT loudness_range_finite CHECK (loudness_range >= 0 AND loudness_range < 'Infinity'),
    ADD COLUMN true_peak double precision  -- dBTP
        CONSTRAINT true_peak_finite CHECK (true_peak > '-Infinity' AND true_peak < 'Infinity');

-- A resumable upload's measurement so far, at its offset (as its checkpoint).
ALTER TABLE app.uploads ADD COLUMN analysis bytea;
