"""The ``edge-lam`` command: one entry point for what a user does outside a launch file."""

from __future__ import annotations

import argparse
import sys


def prepare(_: argparse.Namespace) -> int:
    from edge_lam.assets.prepare import prepare_all

    return prepare_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-lam", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "prepare", help="prepare models and data in the cache folder ($EDGE_LAM_CACHE); skips what is there"
    ).set_defaults(run=prepare)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
