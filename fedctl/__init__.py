"""fedctl, the operator CLI."""
