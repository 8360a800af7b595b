"""The transform stage: what the data must be, and how JSON records become the table's rows.

- :mod:`flows.transform.schema`: the table defined once (columns, source paths, types, rules),
  the record checks and the de-duplication of records fetched from several regions;
- :mod:`flows.transform.unnest`: the generic unnest (any nesting of dicts and lists -> one flat frame);
- :mod:`flows.transform.quality`: the quality gate on the frame, derived from the schema.

Importing this package imports nothing heavy: ``schema`` needs neither pandas nor numpy, so the
flow can use it on a run that skips the transform.
"""
