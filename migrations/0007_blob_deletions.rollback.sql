-- Deletions in flight are forgotten: run the rollback with the image-store stopped.
DROP TABLE image_blob_deletions;
