"""`python -m kiln ...`: the same commands as the `kiln` script."""

from kiln.cli import main

raise SystemExit(main())
