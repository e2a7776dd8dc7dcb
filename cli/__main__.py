"""`python -m cli ...` is `retina ...`."""

from cli.main import main

raise SystemExit(main())
