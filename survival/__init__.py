"""The clinical survival model: schema, time grid, hazard models, loss, metrics, demo data.

Submodules are imported explicitly (`survival.schema`, …) and nothing is re-exported here, so that
importing the torch-free parts (schema, timegrid, spec) never loads torch.
"""
