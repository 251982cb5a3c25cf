"""What the coordinator and the sites share: wire stubs, run plan, identity and TLS, audit chain."""
