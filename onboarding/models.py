"""Mailbox requests, approval stages and provisioning runs live here."""
