"""Command line of galvatron-cost (stub until its issue lands)."""
import sys

import click


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def main(args):
    """Not implemented yet."""
    print("galvatron-cost: not implemented yet", file=sys.stderr)
    sys.exit(1)
