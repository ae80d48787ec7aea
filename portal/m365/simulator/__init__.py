"""The tenant simulator: Microsoft 365 surfaces served locally over HTTPS (see docs/simulator.md)."""
