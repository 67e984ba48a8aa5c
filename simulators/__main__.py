"""`python -m simulators …` is `occ simulate …`."""

from simulators.cli import main

raise SystemExit(main())
