"""The countries pipeline: REST Countries -> flat DataFrame -> PostgreSQL table, with Prefect. ``countries``
is the flow, ``cli`` its command line; one package per stage: ``source``, ``transform``, ``load`` and ``ops``
(blocks, automations, the local stack). ``docs/how-it-works.md`` has the module map."""
