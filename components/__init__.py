"""Pulumi components of Production Tool's environments (see docs/iac.md).

``program.run()`` is the whole program; ``frontend``, ``backend``, ``database``,
``credentials`` and ``backup_storage`` hold the ComponentResources; ``providers/`` the
dynamic providers for Neon, Railway and (for previews) role passwords; ``policy/`` the
policy pack.
"""
