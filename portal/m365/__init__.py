"""Clients for the Microsoft 365 surfaces the portal uses, and the tenant simulator beside them."""
