-- A finished upload keeps its row until it expires, so that a client retrying its
-- last PATCH is answered its record. record_id was also what told a finished
-- upload from one in progress, and ON DELETE SET NULL cleared it with the record:
-- deleting a record made its finished upload one in progress again, which HEAD
-- offered to resume, PATCH tried to, and which counted against the 16 a user may
-- have (16 deleted records: no new upload for a day). Deleting the record now
-- deletes its upload, as DELETE /uploads/<id> would: 404 from then on.

ALTER TABLE app.uploads
    DROP CONSTRAINT uploads_record_id_fkey,
    ADD CONSTRAINT uploads_record_id_fkey
        FOREIGN KEY (record_id) REFERENCES app.records (id) ON DELETE CASCADE;

-- Those the old rule left: no record, and no MP3 of their own (an upload in
-- progress has its large object from its creation until its record takes it).
DELETE FROM app.uploads AS u
WHERE u.record_id IS NULL AND u.lo_oid IS NULL;
