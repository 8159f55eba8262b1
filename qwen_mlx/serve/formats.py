"""Structured outputs as the two APIs ask for them, turned into the engine's
:class:`~qwen_mlx.engine.constraint.Constraint`: OpenAI's ``response_format`` and forced
``tool_choice``, Ollama's ``format``. Shapes are checked here; whether the schema is one the
matcher supports is checked when the request is built (a 400 naming the keyword)."""

from __future__ import annotations

from ..engine.constraint import Constraint
from ..errors import QwenMlxError
from ..tools import calls
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
        return json_schema(spec["schema"], "response_format")
    raise RequestError(400, "'response_format' type must be text, json_object or "
                            "json_schema", param="response_format")


def ollama_format(value) -> Constraint | None:
    """``format``: "json", or a JSON schema object."""
    if value in (None, ""):
        return None
    if value == "json":
        return Constraint.json()
    if isinstance(value, dict):
        return json_schema(value, "format")
    raise RequestError(400, "'format' must be \"json\" or a JSON schema object", param="format")


def forced_tool_call(tools: list, name: str | None, *, several: bool = False) -> Constraint:
    """``tool_choice`` "required" or a named function: :func:`~qwen_mlx.tools.calls.
    forced_call`, its refusals a 400 naming the field they came from."""
    try:
        return calls.forced_call(tools, name, several=several)
    except QwenMlxError as e:
        text = str(e)
        raise RequestError(400, text, param="tool_choice" if "tool_choice" in text
                           else "tools") from None


def tool_choice(kind: str, tools: list | None, name: str | None, several: bool) \
        -> tuple[list | None, Constraint | None, bool]:
    """What every API's tool choice means, once its own spelling is read: ``kind`` "auto"
    offers the tools, "none" does not, "required" forces one call or more (one unless
    ``several``), "named" forces one call of ``name`` -> (tools to offer, the forcing
    constraint, whether several calls may be returned)."""
    if kind == "auto":
        return tools, None, several
    if kind == "none":
        return None, None, several
    if not isinstance(tools, list) or not tools:
        raise RequestError(400, "forcing a tool call needs 'tools'", param="tool_choice")
    if kind == "required":
        return tools, forced_tool_call(tools, None, several=several), several
    return tools, forced_tool_call(tools, name), False


def json_schema(schema, param: str) -> Constraint:
    """A JSON schema as a constraint; a schema the grammar engine refuses is a 400 naming
    ``param``, the field it came from."""
    try:
        return Constraint.schema(schema)
    except QwenMlxError as e:
        raise RequestError(400, str(e), param=param) from None
