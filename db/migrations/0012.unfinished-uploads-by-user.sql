-- Every quota check (app.assert_within_quota: at each 512 KiB a POST /record
-- appends, at each checkpoint) sums the MP3 bytes of the user's unfinished
-- uploads. Finished ones keep their row until they expire (GET /uploads/<id>
-- answers their record), so the user's index alone would visit those too;
-- this one holds only the unfinished, with their bytes.

CREATE INDEX uploads_unfinished_user_id_idx ON app.uploads (user_id) INCLUDE (mp3_bytes)
    WHERE record_id IS NULL;
