"""galvatron-contracts: the documents the four tools exchange and every rule more than one of them follows.

Modules: ``documents`` (schemas, reading, validation, routing, migration, errors and exit codes, atomic writes),
``limits`` (the bounds of every value and count), ``consistency`` (a profile's or cost model's numbers agree),
``options`` (the shared click option types), ``models`` (model specs, presets, Hugging Face config import,
parameter counts), ``ranks`` (the rank layout of a plan), ``plan`` (the typed plan, parsed and checked once),
``pipeline`` (in-flight micro-batches per schedule, the even layer split, divisors), ``names`` (how strategies,
layouts and plans are written in one line), ``devices`` (peak TFLOP/s, CPU name), ``launch`` (``--nproc``:
torchrun as a subprocess, signals passed on, one outcome back), ``isolation`` (the monorepo's import rules, for
tests).
"""
__version__ = "1.3.0"
