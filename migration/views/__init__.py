"""Inventory, waves, migration runs and decommissioning: one module per area."""
