-- A PATCH cut off mid-body still stores what it brought, in a last checkpoint
-- made within a few seconds of the cut (converter/resume.py's grace). A client
-- asks HEAD at once (tus-js-client's first retry waits 0 ms): answered the offset
-- from before that checkpoint, it sends everything since again, and its new PATCH
-- takes the upload over, so the old one's last checkpoint is refused. So a PATCH
-- says it is at work, until a time it renews at each checkpoint, and clears that
-- once it has stored its last one; HEAD waits (bounded) while it is at work.
-- A PATCH whose replica died leaves it set: it lapses within seconds.

ALTER TABLE app.uploads
    ADD COLUMN patch_busy_until timestamptz;

COMMENT ON COLUMN app.uploads.patch_busy_until IS
    'A PATCH is at work on the upload until then (renewed at each checkpoint; NULL once it stored its last).';
