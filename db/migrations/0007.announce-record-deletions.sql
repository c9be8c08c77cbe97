-- Every way a finished record goes (the api function, a cascade from
-- app.users, an admin deleting rows in pgAdmin) is announced, at commit, on
-- the channel mp3_record_deleted with the MP3's SHA-256 in hex: each service
-- process drops that file from its download cache at once, rather than
-- keeping a deleted recording on its disk until it is evicted.
--
-- Written to apply again over itself: an early build numbered it 0006.
CREATE OR REPLACE FUNCTION app.announce_record_deleted() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('mp3_record_deleted', encode(OLD.sha256, 'hex'));
    RETURN OLD;
END;
$$;

REVOKE ALL ON FUNCTION app.announce_record_deleted() FROM PUBLIC;

CREATE OR REPLACE TRIGGER records_announce_deletion
    AFTER DELETE ON app.records
    FOR EACH ROW
    WHEN (OLD.sha256 IS NOT NULL)  -- an unfinished upload was never downloaded
    EXECUTE FUNCTION app.announce_record_deleted();
