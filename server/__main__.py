"""``python -m server`` is the ``portrait`` command."""

from server.cli import main

raise SystemExit(main())
