"""The installed Concordia version, reported by agents and written into model cards."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("concordia")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+source"
