"""Options and error handling the `multitower` commands share (`commands.cli` and its modules)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import click

from multitower.dates import check_date
from multitower.errors import MultitowerError


def friendly_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """Turns the project's refusals (`MultitowerError`) into one clear line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> None:
        try:
            return fn(*args, **kwargs)
        except MultitowerError as err:
            raise click.ClickException(str(err)) from None

    return wrapper


config_option = click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    help="The project's YAML config.",
)


def check_date_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_date(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


date_option = click.option(
    "--date", required=True, callback=check_date_option, help="The day, YYYY-MM-DD."
)
