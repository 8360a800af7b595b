"""The transform stage: :mod:`~flows.transform.schema` (the table defined once, the record checks),
:mod:`~flows.transform.unnest` (records -> one flat frame) and :mod:`~flows.transform.quality` (the gate).
``schema`` imports neither pandas nor numpy, so a run that skips the transform never loads them."""
