"""docs/python.md is true: its examples run, in order, against a live `dlm serve`, and each prints
exactly the output the page shows under it."""

import asyncio
import contextlib
import io
import re
from pathlib import Path

from dlm.client import DLMClient
from tests.conftest import Server

PAGE = Path(__file__).parent.parent / "docs" / "python.md"
BLOCK = re.compile(r"```(python|text)\n(.*?)```", re.DOTALL)


def examples() -> list[tuple[str, str | None]]:
    """Each python block with the text block right after it, if any."""
    blocks = BLOCK.findall(PAGE.read_text())
    pairs = []
    for index, (kind, body) in enumerate(blocks):
        if kind == "python":
            follows = blocks[index + 1] if index + 1 < len(blocks) else None
            pairs.append((body, follows[1] if follows and follows[0] == "text" else None))
    return pairs


def run_examples(url: str) -> None:
    namespace: dict[str, object] = {}
    for number, (code, expected) in enumerate(examples(), start=1):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code.replace("http://127.0.0.1:8000", url), namespace)  # noqa: S102 - the page's own code
        if expected is not None:
            assert printed.getvalue() == expected, f"example {number} of docs/python.md:\n{code}"


async def test_every_example_on_the_python_page_runs_and_prints_what_it_shows(
    database_url: str, tmp_path: Path
) -> None:
    assert len(examples()) >= 6
    local, scratch = tmp_path / "local", tmp_path / "scratch"
    for path, content in {
        "scan-001.ms": b"hello, DLM\n",
        "run-42/a.ms": b"a",
        "run-42/b.ms": b"bb",
        "run-42/sub/c.ms": b"ccc",
    }.items():
        (local / path).parent.mkdir(parents=True, exist_ok=True)
        (local / path).write_bytes(content)
    scratch.mkdir()
    server = await Server(database_url, tmp_path / "data").ready()
    try:
        with DLMClient(server.base) as client:
            client.add_location("local", "local-dev")
            client.add_storage("local", root_directory=str(local), location_name="local")
            client.add_storage("scratch", root_directory=str(scratch), location_name="local")
        await asyncio.to_thread(run_examples, server.base)
    finally:
        server.stop()
