"""The countries pipeline: REST Countries -> flat DataFrame -> Postgres table.

Modules, one job each:

- ``errors``: the exception hierarchy; every deliberate failure is a ``CountriesError``.
- ``api``: the async REST Countries client (dialects v5 and v3.1 described as data).
- ``unnest``: a generic JSON-records -> flat DataFrame function (no Prefect inside).
- ``load``: validated, atomic, zero-downtime replace of a Postgres table via COPY.
- ``quality``: the quality gate run before a replace.
- ``local_db``: the embedded PostgreSQL used by local runs when no block exists.
- ``countries``: the Prefect flow and its command line.
"""
