"""``python -m growbatch``: the same as the ``growbatch`` command."""

from .cli import main

raise SystemExit(main())
