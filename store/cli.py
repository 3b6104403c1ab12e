"""The `store` command line. Subcommands live beside the component they drive."""

from __future__ import annotations

import click

from store import malloc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="store")
def main() -> None:
    """store: a distributed object and block store."""
    malloc.tune()


def _register() -> None:
    from store.bench import bench_command
    from store.client import cli as client_cli
    from store.client.pg_cli import pg_group
    from store.cluster import cluster_group
    from store.configfile import config_group
    from store.gateways.http.cli import http_group
    from store.gateways.nbd.cli import nbd_group
    from store.gateways.s3.cli import s3_group
    from store.image.cli import image_group
    from store.master.cli import master_command
    from store.osd.cli import file_store_command, osd_group
    from store.status import health_command, status_command
    from store.tls import tls_group

    for command in (
        client_cli.write_command,
        client_cli.read_command,
        client_cli.delete_command,
        client_cli.stat_command,
        client_cli.ls_command,
        client_cli.pool_group,
        pg_group,
        client_cli.auth_group,
        master_command,
        osd_group,
        file_store_command,
        tls_group,
        cluster_group,
        status_command,
        health_command,
        config_group,
        bench_command,
        image_group,
        nbd_group,
        http_group,
        s3_group,
    ):
        main.add_command(command)
    for name, command in client_cli.osd_admin_group.commands.items():
        osd_group.add_command(command, name)


_register()
