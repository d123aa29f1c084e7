"""Pulumi program of every ptool-ops stack: dev, staging, prod and the pr-<n> previews.

The code lives in the installed ``components`` package (``pip install -e .`` into the
Pulumi virtualenv): the language host puts only this directory on ``sys.path``, and the
dynamic providers pickled into state import ``components`` and ``ptool_ops`` by name.
"""

from components.program import run

run()
