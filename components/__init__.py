"""Pulumi components of Production Tool's environments (see docs/iac.md).

``program.run()`` is the whole program; ``frontend``, ``backend``, ``database`` and
``backup_storage`` hold the ComponentResources; ``providers/`` the dynamic providers for
Neon and Railway; ``policy/`` the policy pack.
"""
