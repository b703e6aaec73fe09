"""`multitower stats`: a preprocessed day's statistics as a table, and optionally a PNG."""

from __future__ import annotations

import click

from commands.options import config_option, date_option, friendly_errors
from multitower.config import load_config


@click.command()
@config_option
@date_option
@click.option("--png", "png_path", type=click.Path(dir_okay=False),
              help="Also draw the statistics into this PNG file (label correlations, numeric "
                   "histograms, list lengths, rejection reasons).")
@friendly_errors
def stats(config_path: str, date: str, png_path: str | None) -> None:
    """Print a preprocessed day's statistics (from its manifest) as a table."""
    from multitower.manifest import read_manifest
    from pipeline.report import draw_png, stats_table

    manifest = read_manifest(load_config(config_path).data.tfrecords, date)
    click.echo(stats_table(manifest))
    if png_path:
        try:
            draw_png(manifest, png_path)
        except OSError as err:
            raise click.ClickException(f"cannot write the PNG {png_path}: {err.strerror or err}"
                                       ) from None
        click.echo(f"\ndrew {png_path}")
