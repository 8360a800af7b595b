"""The countries pipeline: REST Countries -> flat DataFrame -> PostgreSQL table, with Prefect.

``countries`` is the flow (read it first); ``cli`` its command line. Below them, one
package per stage of a run: ``source`` (the REST Countries client), ``transform``
(the table's schema, the generic unnest, the quality gate), ``load`` (replace a
table's rows without blocking readers, and say what changed) and ``ops`` (blocks,
automations, the local stack). ``errors``: every deliberate failure is a
``CountriesError``. ``docs/how-it-works.md`` has the module map.
"""
