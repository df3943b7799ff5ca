"""Command-line option types every tool shares (click is a dependency of galvatron-contracts for this module only).

    @click.option("--memory", type=Finite(0, MAX_MEMORY_GIB, min_open=True))   # limits.py holds the bounds

click's FloatRange lets 'nan' through (every comparison with it is false) and, without a maximum, 'inf' and
1e308, which overflow where an option is turned into bytes or a timeout. ``Finite`` needs both bounds and
refuses what is not a finite number: a usage error (exit 2) naming the option, before any work.
"""
from __future__ import annotations

import math

import click


class Finite(click.FloatRange):
    """A finite float in [min, max] (either end open on request)."""

    name = "number"

    def __init__(self, min: float, max: float, *, min_open: bool = False, max_open: bool = False):
        super().__init__(min, max, min_open=min_open, max_open=max_open)

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number; expected a finite number from {self.min} to {self.max}", param, ctx)
        return number
