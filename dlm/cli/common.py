"""What every `dlm` command shares: one-line errors, settings, and running a coroutine."""

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import click
import sqlalchemy.exc

from dlm.config import InvalidSettings, Settings
from dlm.db.engine import translate_database_error
from dlm.errors import DLMError


class CLIError(click.ClickException):
    """One readable line on stderr and exit status 1, never a traceback."""

    def show(self, file: Any = None) -> None:
        click.echo(f"dlm: error: {self.message}", err=True)


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env(**overrides)
    except InvalidSettings as exc:
        raise CLIError(str(exc)) from None


def run(coroutine_function: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    try:
        return asyncio.run(coroutine_function())
    except DLMError as exc:
        raise CLIError(exc.message) from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    except (OSError, sqlalchemy.exc.SQLAlchemyError) as exc:
        translated = translate_database_error(exc)
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise CLIError(f"{translated.message if translated else 'database error'}: {detail}") from None
