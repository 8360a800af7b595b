"""The countries pipeline: REST Countries -> flat DataFrame -> PostgreSQL table, with Prefect.

``countries`` is the flow (read it first); ``docs/how-it-works.md`` lists every
module and its one job. The public pieces beside the flow: ``api`` (the async
REST Countries client), ``unnest`` (JSON records of any nesting -> one
DataFrame), ``load`` (replace a table's rows without blocking readers),
``schema`` (the table, defined once), ``cli`` and ``local`` (the command line
and its local stack), ``settings`` and ``operations`` (what a deployment needs
on the Prefect server), ``errors`` (every deliberate failure is a
``CountriesError``).
"""
