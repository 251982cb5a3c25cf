"""Integration tests for federation/: real gRPC over loopback mutual TLS."""
