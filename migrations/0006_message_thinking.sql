-- Thinking: a thinking model's reasoning (Ollama's `message.thinking`) is stored apart from the
-- answer, so history shows it without it ever being mistaken for (or resent as) the answer.
-- depends: 0005_image_change_notify

-- NULL when the model did not think (or for rows written before this column); adding a nullable
-- column without a default rewrites nothing.
ALTER TABLE messages ADD COLUMN thinking text;
