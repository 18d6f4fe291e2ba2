"""The Python examples of the documentation, as code the tests can run.

:func:`python_blocks` reads the fenced ```python blocks of a Markdown file;
:func:`exec_module` runs one as module code, :func:`run_fragment` runs one
that uses ``await``, ``async with`` or ``async for`` at its top level (as the
examples do, as if typed into ``python -m asyncio``) inside the running event
loop. The names an example takes for granted (``app``, ``task_id``, a key) come
from the namespace the test passes.

Code is compiled with the file name ``"docs/guide.md:89"`` (the block's
opening fence) and the line numbers of the Markdown file, so a traceback reads
``File "docs/guide.md:89", line 93``: the example and the failing line.

Both runners keep the value of each expression statement the example runs
(outside the functions and classes it defines), in order, in ``__values__``
(as the interactive prompt shows them), so that a test can check what a bare
``await app.stats()`` returned.

Tests find blocks by a distinctive substring (:func:`find_block`), never by
position: blocks move when the documents are edited.
"""

from __future__ import annotations

import ast
import linecache
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import CodeType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

DOCS = ("README.md", "docs/guide.md", "docs/query.md", "docs/http.md", "docs/protocol.md",
        "docs/postgres.md")
"""The documents whose Python examples the tests run (all of them must be covered)."""

VALUES = "__values__"

_OPEN = re.compile(r"^(?P<indent>[ \t]*)```(?:python|python3|py)[ \t]*$")
_CLOSE = re.compile(r"^[ \t]*```[ \t]*$")


@dataclass(frozen=True)
class Block:
    """One example: ``file`` (relative to the repository), ``line`` (1-based: the
    opening fence, or for a part made by :meth:`cut` the line before the part; the
    code starts on the next line) and its ``code``."""

    file: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"

    def replace(self, old: str, new: str) -> Block:
        """The block with ``old`` replaced by ``new`` (which must be there)."""
        assert old in self.code, f"{self}: {old!r} is not in the example"
        return replace(self, code=self.code.replace(old, new))

    def cut(self, marker: str) -> tuple[Block, Block]:
        """The block split before its first top-level statement whose source holds
        ``marker``: the statements before it, and the rest (line numbers kept)."""
        lines = self.code.splitlines(keepends=True)
        for node in ast.parse(self.code).body:
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))])
            text = "".join(lines[first - 1:node.end_lineno])
            if marker in text:
                head = "".join(lines[:first - 1])
                tail = "".join(lines[first - 1:])
                return (replace(self, code=head),
                        replace(self, line=self.line + first - 1, code=tail))
        raise AssertionError(f"{self}: no top-level statement holds {marker!r}")


def python_blocks(path: str | Path) -> list[Block]:
    """The ```python blocks of the Markdown file ``path`` (relative to the
    repository, or absolute), in order."""
    full = (Path(path) if Path(path).is_absolute() else ROOT / path).resolve()
    name = full.relative_to(ROOT).as_posix() if full.is_relative_to(ROOT) else str(full)
    lines = full.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _OPEN.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent = opening["indent"]
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not _CLOSE.match(lines[i]):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line)
            i += 1
        if i == len(lines):
            raise ValueError(f"{name}:{start + 1}: the ```python fence is never closed")
        blocks.append(Block(name, start + 1, "\n".join(body) + "\n"))
        i += 1
    return blocks


def all_blocks(files: Iterable[str] = DOCS) -> list[Block]:
    """The Python blocks of every document in ``files``."""
    return [block for name in files for block in python_blocks(name)]


def find_block(marker: str, files: Iterable[str] = DOCS) -> Block:
    """The one block of ``files`` whose code holds ``marker``."""
    found = [b for b in all_blocks(files) if marker in b.code]
    assert len(found) == 1, f"{len(found)} examples hold {marker!r}: {[str(b) for b in found]}"
    return found[0]


def exec_module(block: Block, ns: dict[str, Any]) -> dict[str, Any]:
    """Run ``block`` as module code with the globals ``ns``; returns ``ns``."""
    ns.setdefault("__name__", "doc_example")
    tree = ast.parse(block.code)
    tree.body = _keep_values(tree.body)
    exec(_compile(block, tree), ns)
    return ns


async def run_fragment(block: Block, ns: dict[str, Any],
                       stop: type[BaseException] | None = None) -> dict[str, Any]:
    """Run ``block`` in the running event loop, as the body of
    ``async def __example__(): <code>; return locals()`` with the globals ``ns``,
    and return those locals.

    ``stop``, an exception type, ends the example early without an error (a test's
    stand-in raises it to leave an endless ``async for``): the locals are
    returned as they were then."""
    ns.setdefault("__name__", "doc_example")
    tree = ast.parse("async def __example__():\n    return locals()\n")
    function = tree.body[0]
    assert isinstance(function, ast.AsyncFunctionDef)
    body = _keep_values(ast.parse(block.code).body)
    if stop is not None:
        ns["__stop__"] = stop
        handler = ast.ExceptHandler(type=ast.Name("__stop__", ast.Load()), name=None,
                                    body=[ast.Pass()])
        body = [ast.Try(body=body, handlers=[handler], orelse=[], finalbody=[])]
    function.body[:0] = body
    ast.fix_missing_locations(tree)
    exec(_compile(block, tree), ns)
    example = ns.pop("__example__")
    result: dict[str, Any] = await example()
    return result


class _KeepValues(ast.NodeTransformer):
    """Appends the value of each expression statement to ``__values__``; leaves
    the functions and classes the example defines alone (not the example's scope)."""

    def visit_Expr(self, node: ast.Expr) -> ast.stmt:
        if isinstance(node.value, ast.Constant):
            return node
        keep = ast.Attribute(ast.Name(VALUES, ast.Load()), "append", ast.Load())
        return ast.copy_location(ast.Expr(ast.Call(keep, [node.value], [])), node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.stmt:
        return node

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.stmt:
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.stmt:
        return node


def _keep_values(body: list[ast.stmt]) -> list[ast.stmt]:
    """``body`` with the value of each of its expression statements appended to
    ``__values__`` (a new list)."""
    module = _KeepValues().visit(ast.Module(body=body, type_ignores=[]))
    start = ast.Assign(targets=[ast.Name(VALUES, ast.Store())],
                       value=ast.List(elts=[], ctx=ast.Load()))
    out: list[ast.stmt] = [start, *module.body]
    for node in out:
        ast.fix_missing_locations(node)
    return out


def _compile(block: Block, tree: ast.Module) -> CodeType:
    ast.fix_missing_locations(tree)
    ast.increment_lineno(tree, block.line)  # code line 1 is the line after the fence
    filename = str(block)
    lines = (ROOT / block.file).read_text(encoding="utf-8").splitlines(keepends=True)
    linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    # dont_inherit: the example's annotations are evaluated as a reader's script
    # would evaluate them, not under this module's ``from __future__ import annotations``
    return compile(tree, filename, "exec", dont_inherit=True)
