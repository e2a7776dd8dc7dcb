"""The `retina` command line, beside the two services it runs: `main.py` (the command), `local_stack.py`
(`retina up`), `runner.py` (serving apps as processes), `ask/` (`retina ask`), `settings_docs.py`."""
