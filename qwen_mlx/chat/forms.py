"""An MCP server's form (elicitation) asked in the terminal: how each field is asked, and
its answer typed and checked. MCP keeps these schemas flat: strings, numbers, integers,
booleans, single and multiple choices (enum, or titled oneOf/anyOf consts)."""

from __future__ import annotations


def choices(field: dict) -> list[str] | None:
    """A field's allowed values: ``enum``, or the consts of ``oneOf``/``anyOf`` (titled
    choices); for an array, its items'."""
    field = field.get("items", field) if field.get("type") == "array" else field
    if field.get("enum"):
        return [str(v) for v in field["enum"]]
    listed = field.get("oneOf") or field.get("anyOf")
    if isinstance(listed, list) and all(isinstance(o, dict) and "const" in o for o in listed):
        return [str(o["const"]) for o in listed]
    return None


def field_label(name: str, field: dict, required: bool) -> str:
    """How a form field is asked: its title, its type or choices, whether it may be left
    empty."""
    allowed = choices(field)
    many = field.get("type") == "array"
    kind = (f"{'some' if many else 'one'} of {', '.join(allowed)}"
            f"{', separated by commas' if many else ''}") if allowed \
        else field.get("type", "text")
    default = f", default {field['default']}" if "default" in field else ""
    return (f"{field.get('title') or name} ({kind}{default}"
            f"{'' if required else ', optional: empty skips it'})")


def field_value(text: str, field: dict):
    """A typed answer to a form field (MCP's elicitation schemas are flat: string, number,
    integer, boolean, single and multiple choices); a ValueError says what is expected."""
    kind, allowed = field.get("type", "string"), choices(field)
    if kind == "array":
        picked = [part.strip() for part in text.split(",") if part.strip()]
        if allowed and any(p not in allowed for p in picked):
            raise ValueError(f"answer some of {', '.join(allowed)}, separated by commas")
        return picked
    if allowed and text not in allowed:
        raise ValueError(f"answer one of {', '.join(allowed)}")
    if kind == "boolean":
        if text.lower() in ("y", "yes", "true"):
            return True
        if text.lower() in ("n", "no", "false"):
            return False
        raise ValueError("answer yes or no")
    if kind in ("integer", "number"):
        try:
            value = int(text) if kind == "integer" else float(text)
        except ValueError:
            raise ValueError(f"answer {'a whole number' if kind == 'integer' else 'a number'}"
                             ) from None
        low, high = field.get("minimum"), field.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"answer a number from {low} to {high}")
        return value
    return text
