"""The image-store's HTTP edge: routes and handlers, serving bytes from a file or a bucket, conditional requests."""
