-- Listings page by keyset (api.records_list's cursor): newest first, ties
-- broken by id, both descending so one row comparison walks the index.
-- Replaces the index on (user_id, created_at DESC), which this one covers.

CREATE INDEX records_listing_idx ON app.records (user_id, created_at DESC, id DESC);

DROP INDEX app.records_user_id_created_at_idx;
