-- A PATCH that ends before its upload does keeps what it brought after the
-- converter's resume point as it was sent (converter/resume.py): the next
-- PATCH's conversion begins with these bytes. So every PATCH moves the offset
-- to the last byte it brought, however short it was; they are about a second
-- of audio, and gone at the next checkpoint that passes them.

ALTER TABLE app.uploads
    ADD COLUMN wav_pending bytea
        CONSTRAINT wav_pending_bounded CHECK (octet_length(wav_pending) <= 16777216);

COMMENT ON COLUMN app.uploads.upload_offset IS
    'The WAV''s bytes the upload holds: converted and stored as MP3, then wav_pending. Never decreases.';
COMMENT ON COLUMN app.uploads.wav_pending IS
    'The WAV''s bytes sent after the converter''s resume point, kept as sent; the next PATCH begins with them.';
