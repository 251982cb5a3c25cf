"""`python -m coordinator --config coordinator.toml`."""

from coordinator.server import main

raise SystemExit(main())
