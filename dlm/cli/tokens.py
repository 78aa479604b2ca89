"""`dlm token`: DLM's API tokens, made and revoked straight in the database (how the first admin token
comes to be) or, with --url, through a running DLM with an admin token."""

import getpass
from collections.abc import Callable
from typing import Any

import click

from dlm.cli.common import CLIError, in_database_transaction
from dlm.cli.remote import show

ROLES = ("reader", "ingest", "operator", "admin")
TOKEN_COLUMNS = ("name", "role", "created", "created_by", "expires", "revoked", "last_used")


def _over(url: str | None, token: str | None, remote_call: Callable[[Any], Any], local_call: Callable[..., Any]) -> Any:
    """Run ``remote_call(client)`` against the server at ``url``, or ``local_call(session, actor)`` in
    one transaction on the database."""
    if url:
        from dlm.client import DLMClient
        from dlm.errors import DLMError

        try:
            with DLMClient(url, token=token) as client:
                return remote_call(client)
        except DLMError as exc:
            raise CLIError(f"{type(exc).__name__}: {exc.message}") from None

    actor = f"cli:{getpass.getuser()}"
    return in_database_transaction(lambda session: local_call(session, actor), actor=actor)


def _remote_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option("--token", envvar="DLM_TOKEN", help="With --url: an admin's bearer token (DLM_TOKEN).")(
        function
    )
    function = click.option(
        "--url", help="Ask this running DLM (needs an admin token) instead of writing to the database."
    )(function)
    return click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")(function)


@click.group()
def token() -> None:
    """API tokens for pipelines, services and people (docs/security.md).

    Without --url these act on DLM's database (DLM_DATABASE_URL, or the embedded one in DLM_DATA_DIR):
    that is how the first admin token is made. A token's name is the subject its holder acts as.
    """


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the holder may do.")
@click.option("--expires", help="A date-time, or a duration from now: 90d, 12h, P1Y.")
@_remote_options
def create(name: str, role: str, expires: str | None, url: str | None, token: str | None, as_json: bool) -> None:
    """Create a token for NAME and print its secret, once (only a hash is kept).

    \\b
    Examples:
      dlm token create ops-admin --role admin
      export DLM_TOKEN=$(dlm token create pipeline-7 --role ingest --expires 90d)
    """
    from dlm.enums import Role
    from dlm.errors import DLMError
    from dlm.parsing import parse_expiry

    try:
        moment = parse_expiry(expires, "--expires") if expires else None
    except DLMError as exc:
        raise CLIError(exc.message) from None

    async def locally(session: Any, actor: str) -> str:
        from dlm.auth import tokens

        return await tokens.create_token(session, name=name, role=Role(role), created_by=actor, expires=moment)

    secret = _over(url, token, lambda client: client.create_token(name, role, expires=expires), locally)
    show({"name": name, "role": role, "token": secret} if as_json else secret, as_json=as_json)
    if not as_json:
        # Asked of a DLM with a token, that DLM is closed already; otherwise it may have started open.
        restart = "" if url and token else " A DLM that started open needs a restart to require tokens."
        click.echo(
            f"dlm: the secret above stands for {name!r} with role {role}; it is shown only now.{restart}",
            err=True,
        )


@token.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Revoked tokens too.")
@_remote_options
def list_tokens(include_revoked: bool, url: str | None, token: str | None, as_json: bool) -> None:
    """The tokens (never their secrets), with who made them and when each was last used."""

    async def locally(session: Any, actor: str) -> list[Any]:
        from dlm.auth import tokens
        from dlm.rows import row_dicts

        return row_dicts(await tokens.list_tokens(session, include_revoked=include_revoked))

    rows = _over(url, token, lambda client: client.tokens(include_revoked=include_revoked), locally)
    show(rows, TOKEN_COLUMNS, as_json=as_json)


@token.command("revoke")
@click.argument("name")
@_remote_options
def revoke(name: str, url: str | None, token: str | None, as_json: bool) -> None:
    """Revoke NAME's token: refused at once by the DLM that revoked it, within 10 s by the others."""

    async def locally(session: Any, actor: str) -> dict[str, Any]:
        from dlm.auth import tokens
        from dlm.rows import row_dict

        return row_dict((await tokens.revoke_token(session, name=name, revoked_by=actor))._mapping)

    row = _over(url, token, lambda client: client.revoke_token(name), locally)
    show(row, as_json=as_json)
