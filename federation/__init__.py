"""What the coordinator, the sites and the operators must agree on, defined once for all of them.

The wire stubs, the run plan, the session rule, task names, release layouts, the vector codec,
identities and TLS, the signed roster, the audit chain, provisioning and the config loader
(docs/architecture.md lists the modules). It imports only `secagg` and survival's torch-free
modules, so the coordinator can use all of it without loading torch.
"""
