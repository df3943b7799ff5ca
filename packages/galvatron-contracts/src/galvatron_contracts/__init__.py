"""galvatron-contracts: the documents the four tools exchange and every rule more than one of them follows.

Modules: ``documents`` (schemas, reading, validation, routing, migration, errors and exit codes, atomic writes),
``models`` (model specs, presets, Hugging Face config import, parameter counts), ``ranks`` (the rank layout of a
plan), ``plan`` (the typed plan, parsed and checked once), ``pipeline`` (in-flight micro-batches per schedule, the
even layer split), ``names`` (how strategies, layouts and plans are written in one line), ``devices`` (peak
TFLOP/s, CPU name), ``isolation`` (the monorepo's import rules, for tests).
"""
__version__ = "1.1.0"
