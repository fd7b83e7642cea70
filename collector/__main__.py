"""``python -m collector``: the same as the ``audit-collector`` console script."""

from .cli import main

raise SystemExit(main())
