-- Image support: content-addressed blobs, one image row per upload, and messages.has_images.
-- depends: 0001_chat_schema

CREATE TABLE image_blobs (
    sha256       text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes   bigint NOT NULL CHECK (size_bytes > 0),
    mime_type    text NOT NULL,
    width        integer NOT NULL CHECK (width > 0),
    height       integer NOT NULL CHECK (height > 0),
    storage_key  text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE images (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id          text NOT NULL CHECK (char_length(owner_id) BETWEEN 1 AND 128),
    blob_sha256       text NOT NULL REFERENCES image_blobs (sha256),
    message_id        uuid REFERENCES messages (id) ON DELETE SET NULL,
    original_filename text CHECK (char_length(original_filename) <= 255),
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz
);
CREATE INDEX images_message_id_idx ON images (message_id);
CREATE INDEX images_owner_created_idx ON images (owner_id, created_at, id);
CREATE INDEX images_expires_at_idx ON images (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX images_blob_sha256_idx ON images (blob_sha256);

-- Adding a column with a constant default is a catalogue-only change in PostgreSQL 11+, so this
-- does not rewrite a large messages table. Existing rows read as false, which is true for them:
-- no message had images before this migration.
ALTER TABLE messages ADD COLUMN has_images boolean NOT NULL DEFAULT false;

-- Backfill for databases where images were linked out of band before the flag existed.
UPDATE messages m SET has_images = true
 WHERE EXISTS (SELECT 1 FROM images i WHERE i.message_id = m.id);
