"""``python -m sidecar`` is ``ztr``."""

from sidecar import cli

raise SystemExit(cli.main())
