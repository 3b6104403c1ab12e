"""The `store` command line. Subcommands live beside the component they drive."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="store")
def main() -> None:
    """store: a distributed object and block store."""


def _register() -> None:
    # Imported here so that `store --help` stays fast and a broken optional component
    # cannot take the whole command line down with it.
    pass


_register()
