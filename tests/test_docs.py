"""The generated reference pages match the code, and the docs' links point at files that exist."""

import difflib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_reference_pages_are_up_to_date() -> None:
    generator = _generator()
    for name, render in generator.PAGES.items():  # type: ignore[attr-defined]
        written, current = (ROOT / "docs" / name).read_text(), render()
        difference = "\n".join(list(difflib.unified_diff(written.splitlines(), current.splitlines(), lineterm=""))[:30])
        assert written == current, f"docs/{name} is stale (run python docs/generate.py):\n{difference}"


def test_links_between_docs_resolve() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
