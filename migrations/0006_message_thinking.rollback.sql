-- The older schema has nowhere to keep thinking; the answers themselves are untouched.
ALTER TABLE messages DROP COLUMN thinking;
