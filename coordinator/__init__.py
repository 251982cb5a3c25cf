"""The coordinator: gRPC services, round engine, SQLite store, admin API. Never imports torch."""

from federation.version import __version__

__all__ = ["__version__"]
