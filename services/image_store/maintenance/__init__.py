"""Work outside a request: retention clean-up and integrity checks, the `retina maintenance`
commands, and moving blobs from a volume to a bucket."""
