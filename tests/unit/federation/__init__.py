"""Unit tests for federation/ and the fedctl commands built on it."""
