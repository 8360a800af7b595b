"""Operations: what an operator sets up once.

- :mod:`flows.ops.settings`: the blocks the pipeline reads (database, API key, operator settings).
- :mod:`flows.ops.local`: the local stack (a background ``prefect server start`` and an embedded PostgreSQL).
- :mod:`flows.ops.automations`: the automations of unattended operation, as YAML files, and applying them.
"""
