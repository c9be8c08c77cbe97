-- A PATCH too short to be worth converting on its own (a client that sends in
-- small chunks; a hostile one sending a byte a request) keeps its bytes as
-- they were sent, a row each (api.upload_append), and the next PATCH's
-- conversion begins with them after `wav_pending`. Converting each such PATCH
-- started an FFmpeg (about 60 ms of CPU) and rewrote the upload's pending bytes
-- and measurement whole: a one-byte PATCH late in a 10-minute upload wrote
-- 270 KiB of WAL. A row of its own writes what it brought. The first checkpoint
-- of a later PATCH replaces them all (api.upload_checkpoint); the upload's
-- deletion takes them with it.

CREATE TABLE app.upload_pieces (
    upload_id uuid NOT NULL REFERENCES app.uploads (id) ON DELETE CASCADE,
    at bigint NOT NULL CHECK (at >= 0),  -- the WAV offset of the piece's first byte
    piece bytea NOT NULL CHECK (octet_length(piece) BETWEEN 1 AND 16777216),
    PRIMARY KEY (upload_id, at)
);

COMMENT ON TABLE app.upload_pieces IS
    'WAV bytes a short PATCH kept as sent, after its upload''s wav_pending; the next conversion begins with them.';
