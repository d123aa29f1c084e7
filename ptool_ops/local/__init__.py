"""The embedded local environment. Only names live here: ``cli/local.py`` reads them at
import, and ``--help`` must not pay for the cluster module (psycopg, pydantic)."""

#: the embedded server's superuser: server set-up only (local up/down/reset)
SUPERUSER = "postgres"
