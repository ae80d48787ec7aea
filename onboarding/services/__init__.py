"""Every write in onboarding: one module per area (requests, approvals, provisioning, notifications)."""
