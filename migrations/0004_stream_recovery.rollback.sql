DROP INDEX messages_streaming_progress_idx;
ALTER TABLE messages DROP COLUMN progress_at;
-- The older schema has no `interrupted`; such answers were failures as far as it can say.
UPDATE messages SET status = 'error' WHERE status = 'interrupted';
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('streaming', 'complete', 'stopped', 'error'));
