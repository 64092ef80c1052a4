"""The README and docs/ name only commands, options, files and tests that exist.

Every `olmp ...` command written in README.md, docs/*.md or results/<model>/README.md is checked
against the real argument parser (its verb and each option; a concrete command in a shell block is
parsed whole), every script, make target and repository path they name must exist, and so must
every test they cite.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO

from olmp import published
from olmp.cli import build_parser

PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "results").glob("*/README.md")])
# repository paths the pages cite as files of the project (not run outputs)
CITED = re.compile(r"^(?:scripts|benchmarks|tests|docs|olmp|sweeps|models|solvers|docker)/[\w./-]+$")
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
PLACEHOLDER = re.compile(r"[\[\]|<>*]|\.\.\.")


def _shell_lines(text: str) -> list[str]:
    """The command lines of the page's ```bash blocks, continuations joined, comments dropped."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#\s", " " + line)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks, with markdown's escaped pipes unescaped."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [s.replace("\\|", "|") for s in re.findall(r"`([^`\n]+)`", prose)]


def _words(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    while words and ENV.match(words[0]):
        words.pop(0)
    return words


def _commands() -> list[tuple[str, str, bool]]:
    """(page, command, concrete) for every command a page shows; concrete ones come from shell blocks."""
    out = []
    for page in PAGES:
        text = page.read_text()
        name = str(page.relative_to(REPO))
        out += [(name, c, True) for c in _shell_lines(text)]
        out += [(name, c, False) for c in _spans(text)
                if _words(c)[:1] in (["olmp"], ["make"], ["python"], [".venv/bin/python"])
                or re.match(r"^(scripts|benchmarks)/\S+\.(sh|py)\b", " ".join(_words(c)))]
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _check_olmp(words: list[str], concrete: bool) -> str | None:
    """Why ``olmp WORDS`` is not a command the parser knows, or None."""
    parser = build_parser()
    verbs = _subparsers(parser)
    rest = [w.strip("[]").removesuffix("...").strip("[]") for w in words[1:]]
    while rest and rest[0] in parser._option_string_actions:
        rest.pop(0)
    if not rest:
        return None
    verb = rest[0]
    if verb != "" and verb not in verbs:
        return f"no verb {verb!r}"
    known = set(parser._option_string_actions)
    for p in ([verbs[verb]] if verb else verbs.values()):
        known |= set(p._option_string_actions)
    for w in rest[1:]:
        if w.startswith("--") and w.split("=")[0] not in known:
            return f"{verb or 'no verb'} has no option {w.split('=')[0]}"
    if concrete and verb and not any(PLACEHOLDER.search(w) for w in words):
        try:
            parser.parse_args(words[1:])
        except SystemExit:
            return "argparse refuses it"
    return None


def _check(words: list[str], concrete: bool) -> str | None:
    """Why the command a page shows would not run as written, or None."""
    if words[0] == "olmp":
        return _check_olmp(words, concrete)
    if words[0] == "make":
        targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
        missing = [t for t in words[1:] if not t.startswith("-") and t not in targets]
        return f"the Makefile has no target {missing[0]!r}" if missing else None
    if words[0] in ("python", ".venv/bin/python"):
        if words[1:2] == ["-m"]:
            module = REPO / Path(*words[2].split("."))
            return None if module.with_suffix(".py").is_file() or module.is_dir() else f"no module {words[2]}"
        words = words[1:]
    if words and not PLACEHOLDER.search(words[0]) and not (REPO / words[0]).is_file():
        return f"no file {words[0]}"
    return None


def test_the_pages_show_commands() -> None:
    commands = _commands()
    olmp = [c for _, c, _ in commands if _words(c)[:1] == ["olmp"]]
    assert len(olmp) >= 40, "the extractor finds too few olmp commands: is it broken?"
    verbs = {_words(c)[1] for c in olmp if len(_words(c)) > 1}
    assert set(_subparsers(build_parser())) <= verbs, "a verb is documented nowhere"


@pytest.mark.parametrize("page,command,concrete", _commands())
def test_every_documented_command_parses(page: str, command: str, concrete: bool) -> None:
    why = _check(_words(command), concrete)
    assert why is None, f"{page}: `{command}`: {why}"


def test_every_cited_file_and_test_exists() -> None:
    for page in PAGES:
        text = page.read_text()
        name = str(page.relative_to(REPO))
        examples = set(re.findall(r"`([^`]+)`:\n\n```python", text))  # worked examples of files to add
        cited = [s for s in _spans(text) if CITED.match(s.split("::")[0]) and s not in examples]
        for span in cited:
            file, *tests = span.split("::")
            assert (REPO / file).exists(), f"{name} cites {file}, which does not exist"
            for t in tests:
                assert re.search(rf"^def {re.escape(t)}\(", (REPO / file).read_text(), re.M), \
                    f"{name} cites {span}: no such test"
        for span in _spans(text):  # a continued test citation: `::test_x`
            if span.startswith("::test_"):
                assert any(re.search(rf"^def {re.escape(span[2:])}\(", f.read_text(), re.M)
                           for f in (REPO / "tests").glob("test_*.py")), f"{name} cites {span}: no such test"
        for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not link.startswith("http"):
                assert (page.parent / link).exists(), f"{name} links to {link}, which does not exist"


def test_readme_is_short_and_opens_with_the_two_commands() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"
    assert lines[0].startswith("# "), "README.md opens with its title"
    head = "\n".join(lines[:6])
    assert "make reproduce" in head and "make test" in head


def test_the_readme_quotes_the_papers_numbers_from_their_one_place() -> None:
    """The paper's released models as the README's tables show them are olmp.published's numbers."""
    text = (REPO / "README.md").read_text()
    for model, paper in published.OLMP.items():
        section = text.split(f"**{published.NAMES[model]}** (reference here")[1].split("\n\n")[1]
        row = next(line for line in section.splitlines() if line.startswith("| paper / released model"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert paper.test_accuracy is not None
        assert cells[1:3] == [f"{paper.ratio:g}x", f"{100 * paper.test_accuracy:.2f}%"], row
