"""`python -m gateway` is the `courtyard` command."""

from gateway.cli import main

raise SystemExit(main())
