"""`python -m coordinator --config coordinator.toml`."""

from coordinator.handshake_log import enable_handshake_trace

enable_handshake_trace()  # before grpc is imported: the core reads GRPC_TRACE once, at start

from coordinator.server import main  # noqa: E402

raise SystemExit(main())
