"""Reads in onboarding that need care: visibility, eligibility, inboxes."""
