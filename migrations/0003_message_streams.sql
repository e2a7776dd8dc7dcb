-- Streams: the assistant message a stream writes to carries its stream ID (so a stop request
-- reaching any replica can find it), and every message keeps the image IDs it was sent with.
-- depends: 0002_image_support

ALTER TABLE messages ADD COLUMN stream_id uuid;
ALTER TABLE messages ADD COLUMN image_ids uuid[] NOT NULL DEFAULT '{}';
CREATE UNIQUE INDEX messages_stream_id_idx ON messages (stream_id) WHERE stream_id IS NOT NULL;
