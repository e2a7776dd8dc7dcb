-- Stream recovery: streams whose gateway died are closed as `interrupted` by a sweeper, which
-- needs to know when a live stream last saved progress.
-- depends: 0003_message_streams

ALTER TABLE messages DROP CONSTRAINT messages_status_check;
-- NOT VALID + VALIDATE: the check of existing rows does not block writes while it runs.
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('streaming', 'complete', 'stopped', 'error', 'interrupted')) NOT VALID;
ALTER TABLE messages VALIDATE CONSTRAINT messages_status_check;

-- Set when a stream starts and on every progress save; NULL for rows that never streamed.
ALTER TABLE messages ADD COLUMN progress_at timestamptz;
-- Small: only rows that are streaming right now are in it.
CREATE INDEX messages_streaming_progress_idx ON messages (progress_at) WHERE status = 'streaming';
