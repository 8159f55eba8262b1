"""Plain Python functions as tools, for scripts: ``Model.chat(..., tools=[add])``.

The parameters' JSON schema comes from the signature's annotations (int, float, str, bool,
list, dict) unless one is given; the description from the docstring's first paragraph.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import json
from typing import Callable

from ..errors import QwenMlxError
from .toolbox import ToolResult

JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean",
              list: "array", dict: "object"}
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="qwen-tool")


class FunctionTool:
    """A Python callable offered to the model. It runs in a worker thread, so a call can
    time out (the function itself runs on: Python cannot stop it)."""

    source = "python"

    def __init__(self, fn: Callable, *, name: str | None = None,
                 description: str | None = None, parameters: dict | None = None) -> None:
        if not callable(fn):
            raise QwenMlxError(f"a tool must be callable, not {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "")
        if not self.name.isidentifier():
            raise QwenMlxError(f"a tool needs a name (an identifier), not {self.name!r}")
        doc = inspect.getdoc(fn) or ""
        self.description = description if description is not None else \
            doc.split("\n\n")[0].replace("\n", " ")
        self.parameters = parameters if parameters is not None else schema_of(fn)

    def start(self, arguments: dict, on_progress=None) -> concurrent.futures.Future:
        """Run the function in the pool (it reports no progress)."""
        return _POOL.submit(self._run, arguments)

    def _run(self, arguments: dict) -> ToolResult:
        try:
            value = self.fn(**arguments)
        except TypeError as e:  # arguments that do not fit the signature
            return ToolResult(f"error: {e}", True)
        except Exception as e:
            return ToolResult(f"error: {type(e).__name__}: {e}", True)
        return ToolResult(value if isinstance(value, str) else
                          json.dumps(value, ensure_ascii=False, default=str))


def schema_of(fn: Callable) -> dict:
    """A JSON schema for ``fn``'s keyword parameters, from their annotations; those without
    a default are required."""
    properties, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = p.annotation
        if isinstance(hint, str):  # from __future__ import annotations
            hint = {t.__name__: t for t in JSON_TYPES}.get(hint, hint)
        properties[p.name] = {"type": JSON_TYPES[hint]} if hint in JSON_TYPES else {}
        if p.default is p.empty:
            required.append(p.name)
    return {"type": "object", "properties": properties, "required": required}
