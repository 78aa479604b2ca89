"""Write the reference pages that come from the code: docs/cli.md (from the Click commands),
docs/api-reference.md and docs/permissions.md (from the OpenAPI document). `python docs/generate.py`; a test fails when
they are out of date.
"""

import sys
from pathlib import Path
from typing import Any

import click

DOCS = Path(__file__).parent


def cli_reference() -> str:
    from dlm.cli import main

    lines = ["# `dlm` command reference", "", "Generated from the commands by `python docs/generate.py`.", ""]

    def walk(command: click.Command, path: list[str]) -> None:
        # The settings `dlm` itself runs with (main's context_settings), so the help reads the same.
        context = click.Context(
            command,
            info_name=" ".join(path),
            terminal_width=100,
            max_content_width=100,
            help_option_names=["-h", "--help"],
        )
        lines.extend(
            [f"{'#' * min(len(path) + 1, 4)} `{' '.join(path)}`", "", "```", command.get_help(context), "```", ""]
        )
        if isinstance(command, click.Group):
            for name in sorted(command.list_commands(context)):
                walk(command.get_command(context, name), [*path, name])

    walk(main, ["dlm"])
    return "\n".join(lines)


def _openapi() -> dict[str, Any]:
    from dlm.app import create_app
    from dlm.config import Settings

    return create_app(Settings(database_url="postgresql://unused@127.0.0.1/unused")).openapi_schema.to_schema()


def permissions() -> str:
    """The whole access policy on one page: every route and the role it needs, as the routes declare it."""
    from dlm.enums import Role

    document = _openapi()
    lines = [
        "# Who may call what",
        "",
        "Generated from the routes' declarations (`x-dlm-role` in `/schema/openapi.json`) by",
        "`python docs/generate.py`. Each role may do everything the roles above it may; see",
        "[security.md](security.md) for how callers get a role.",
        "",
        "| role | route | what it does |",
        "|---|---|---|",
    ]
    rows = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            role = operation.get("x-dlm-role", "anyone (health probe)")
            rank = list(Role).index(Role(role)) if role in set(Role) else -1
            rows.append((rank, path, f"| {role} | `{method.upper()} {path}` | {operation.get('summary', '')} |"))
    lines.extend(row for _, _, row in sorted(rows))
    lines.extend(
        [
            "",
            "Besides the route's role: `force=true` on `delete_data_item_payload` needs `admin`, and below",
            "`operator` `query_migrations` and `get_migration` show only the caller's own copies.",
            "",
        ]
    )
    return "\n".join(lines)


def api_reference() -> str:
    document = _openapi()
    lines = [
        "# REST API reference",
        "",
        "Generated from the OpenAPI document (`/schema/openapi.json`) by `python docs/generate.py`;",
        "[api.md](api.md) explains the API, this page lists it.",
        "",
    ]
    for path, methods in sorted(document["paths"].items()):
        for method, operation in methods.items():
            lines.extend([f"## `{method.upper()} {path}`", ""])
            text = operation.get("description") or operation.get("summary") or ""
            if text:
                lines.extend([" ".join(text.split()).replace("<", "&lt;"), ""])
            parameters = operation.get("parameters", [])
            if parameters:
                lines.extend(["| parameter | in | required | type |", "|---|---|---|---|"])
                for parameter in parameters:
                    kind = _type(parameter.get("schema", {}))
                    required = "yes" if parameter.get("required") else ""
                    lines.append(f"| `{parameter['name']}` | {parameter['in']} | {required} | {kind} |")
                lines.append("")
            if "requestBody" in operation:
                lines.extend(["Body: JSON.", ""])
    return "\n".join(lines)


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if "oneOf" in schema or "anyOf" in schema:
        return " or ".join(_type(option) for option in schema.get("oneOf", schema.get("anyOf", [])))
    if "enum" in schema:
        return " / ".join(f"`{value}`" for value in schema["enum"])
    return str(schema.get("type", "object"))


PAGES = {"cli.md": cli_reference, "api-reference.md": api_reference, "permissions.md": permissions}

if __name__ == "__main__":
    for name, render in PAGES.items():
        (DOCS / name).write_text(render())
        print(f"wrote docs/{name}", file=sys.stderr)
