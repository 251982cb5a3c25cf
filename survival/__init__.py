"""The clinical survival model: schema, time grid, discrete-time hazard models, loss, metrics, data."""
