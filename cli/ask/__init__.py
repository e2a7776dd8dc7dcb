"""`retina ask`: ask a vision model about local images from the terminal, answer streamed as it comes.

config (where the gateway is and how to authenticate), request (the body: JSON, or multipart with
the image files streamed from disk), sse (the event stream parser), render (what the terminal shows),
session (one request, Ctrl-C turning into a stop request) and command (argparse and exit codes).
"""
