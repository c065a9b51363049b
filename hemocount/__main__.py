"""``python -m hemocount``."""

from hemocount.cli import main

raise SystemExit(main())
