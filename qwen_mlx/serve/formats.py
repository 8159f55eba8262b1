"""Structured outputs as the two APIs ask for them, turned into the engine's
:class:`~qwen_mlx.engine.constraint.Constraint`: OpenAI's ``response_format`` and forced
``tool_choice``, Ollama's ``format``. Shapes are checked here; whether the schema is one the
matcher supports is checked when the request is built (a 400 naming the keyword)."""

from __future__ import annotations

import json

from ..engine.constraint import JSON_STYLE, Constraint
from ..errors import QwenMlxError
from .server import RequestError


def openai_format(value) -> Constraint | None:
    """``response_format``: text (nothing), ``json_object``, or ``json_schema`` with its
    ``schema`` (``strict`` either way: the mask always enforces the whole schema)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint.json()
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise RequestError(400, "'response_format.json_schema' needs a name (and a "
                                    "schema)", param="response_format")
        if spec.get("schema") is None:
            return Constraint.json()
        return _schema(spec["schema"], "response_format")
    raise RequestError(400, "'response_format' type must be text, json_object or "
                            "json_schema", param="response_format")


def ollama_format(value) -> Constraint | None:
    """``format``: "json", or a JSON schema object."""
    if value in (None, ""):
        return None
    if value == "json":
        return Constraint.json()
    if isinstance(value, dict):
        return _schema(value, "format")
    raise RequestError(400, "'format' must be \"json\" or a JSON schema object", param="format")


def forced_tool_call(tools: list, name: str | None, *, several: bool = False) -> Constraint:
    """A reply that is exactly one call, in Qwen3's format (``<tool_call>`` JSON
    ``</tool_call>``), of the named tool or of any offered one, its arguments valid under
    the tool's parameter schema; with ``several``, one or more such calls, one per line
    (as Qwen3's template writes parallel calls)."""
    calls = []
    for tool in tools:
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RequestError(400, "each tool needs a function with a name", param="tools")
        if name is not None and fn["name"] != name:
            continue
        parameters = fn.get("parameters") or {"type": "object"}
        if not isinstance(parameters, dict):
            raise RequestError(400, f"tool {fn['name']!r}: parameters must be a JSON schema",
                               param="tools")
        calls.append({"type": "object", "properties": {"name": {"const": fn["name"]},
                                                       "arguments": parameters},
                      "required": ["name", "arguments"], "additionalProperties": False})
    if not calls:
        raise RequestError(400, f"tool_choice names {name!r}, which is not in 'tools'"
                           if name else "tool_choice 'required' needs 'tools'",
                           param="tool_choice")
    schema = {**(calls[0] if len(calls) == 1 else {"anyOf": calls}), "x-guidance": JSON_STYLE}
    call = f'<tool_call> "\\n" %json {json.dumps(schema)} "\\n" </tool_call>'
    if not several:
        return Constraint.lark(f"start: {call}")
    return Constraint.lark(f'start: call ("\\n" call)*\ncall: {call}')


def _schema(schema, param: str) -> Constraint:
    try:
        return Constraint.schema(schema)
    except QwenMlxError as e:
        raise RequestError(400, str(e), param=param) from None
