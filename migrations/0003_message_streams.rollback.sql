DROP INDEX messages_stream_id_idx;
ALTER TABLE messages DROP COLUMN image_ids;
ALTER TABLE messages DROP COLUMN stream_id;
