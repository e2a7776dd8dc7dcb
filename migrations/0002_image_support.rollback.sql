ALTER TABLE messages DROP COLUMN has_images;
DROP TABLE images;
DROP TABLE image_blobs;
