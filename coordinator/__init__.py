"""The coordinator: gRPC services, round engine, SQLite store, admin API. Never imports torch."""
