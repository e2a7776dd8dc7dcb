-- A blob's object is deleted after the transaction that removed the last row using it commits, so
-- no database connection waits on the object store (which may stall for S3_OPERATION_TIMEOUT_SECONDS).
-- Until that DELETE is known to be over, an upload of the same bytes must not record a row that
-- points at the object: each blob whose object is being (or was) deleted has one row here, naming
-- its newest deletion (a fresh ID every time) and until when that deletion may still land
-- (NULL once the DELETE answered). The row goes when an upload records the blob again, or a day
-- after its deletion started.
-- depends: 0006_message_thinking

CREATE SEQUENCE image_blob_deletion_ids;

CREATE TABLE image_blob_deletions (
    sha256           text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    deletion_id      bigint NOT NULL,
    started_at       timestamptz NOT NULL,
    in_flight_until  timestamptz
);
CREATE INDEX image_blob_deletions_started_at_idx ON image_blob_deletions (started_at);

ALTER SEQUENCE image_blob_deletion_ids OWNED BY image_blob_deletions.deletion_id;
