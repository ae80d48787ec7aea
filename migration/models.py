"""Inventory, waves, migration runs and decommission tracking live here."""
