"""Untrusted image bytes in, a clean re-encoding out: type sniffing, header checks, decoding, re-encoding,
and the pool of worker processes (with its memory budget) that runs them off the event loop."""
