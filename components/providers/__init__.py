"""Pulumi dynamic providers for APIs without a Pulumi provider: Neon and Railway."""
