"""Where blob bytes live: the filesystem store, the S3 store (its client and uploads), the
`BlobStore` protocol both fulfil, and `open_blob_store`, which picks one from the settings."""
