"""Secure aggregation (Bonawitz et al., CCS 2017), sans-I/O: state machines and crypto, no I/O."""
