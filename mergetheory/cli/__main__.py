"""``python -m mergetheory.cli``."""

from . import main

raise SystemExit(main())
