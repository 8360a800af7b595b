"""Benchmarks: ``python -m tests.benchmarks [--only NAME ...] [--smoke] [--json PATH] [--no-fail]``.

Every ``bench_<name>.py`` module exposes ``run(smoke: bool = False) -> list[Figure]``
(see ``_report.py``); ``__main__.py`` runs them and prints one table.
"""
