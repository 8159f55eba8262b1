"""Settings files people write by hand (finetune's run files, serve's --models file): YAML,
TOML or JSON by their suffix, parsed into a dict, any parser's error as one line."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import QwenMlxError


def read_settings(path: str | Path, what: str) -> dict:
    """The file's top-level keys and values; ``what`` names it in errors ("config x.yaml")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise QwenMlxError(f"cannot read {what}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise QwenMlxError(f"{what}: not UTF-8 text") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib

            values = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            raise QwenMlxError(f"{what}: use a .yaml, .toml or .json file")
    except QwenMlxError:
        raise
    except Exception as e:  # each parser has its own error type; all mean the same here
        raise QwenMlxError(f"{what}: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise QwenMlxError(f"{what}: expected keys and values at the top level")
    return values
