"""The ``mcpServers`` file: Claude Desktop's and LM Studio's format, read as it is.

    {"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem",
                                             "/Users/me/notes"], "env": {"DEBUG": "0"}},
        "search": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer x"}}}}

A server is started by a ``command`` (stdio) or reached at a ``url`` (streamable HTTP).
The fields other clients write are read as they mean them: ``disabled`` (the server is not
started), ``autoApprove`` or ``alwaysAllow`` (its tools that run without asking, as
``--allow-tool``), ``timeout`` (seconds one call may take, instead of ``--tool-timeout``).
``${VAR}``, ``${env:VAR}`` and ``${VAR:-default}`` in ``command``, ``args``, ``env``,
``cwd``, ``url`` and ``headers`` are the environment's values. Every field is checked here,
once; an unknown one is refused by name (so a misspelt ``agrs`` is not silently a server
with no arguments), and so is a variable that is not set.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QwenMlxError

COMMON_KEYS = {"type", "disabled", "autoApprove", "alwaysAllow", "timeout"}
STDIO_KEYS = {"command", "args", "env", "cwd"} | COMMON_KEYS
HTTP_KEYS = {"url", "headers"} | COMMON_KEYS
VARIABLE = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_TIMEOUT = 3600.0  # seconds; a larger "timeout" is likely milliseconds
TYPES = {"stdio": "stdio", "http": "http", "streamable-http": "http", "streamableHttp": "http"}


@dataclass(frozen=True)
class ServerSpec:
    """One MCP server: started by ``command`` with ``args``, ``env`` and ``cwd``, or reached
    at ``url`` with ``headers``."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    disabled: bool = False
    auto_approve: tuple[str, ...] = ()  # its tools that run without asking
    timeout: float | None = None  # seconds a call may take (None: the toolbox's)

    def describe(self) -> str:
        return self.url or " ".join([self.command or "", *self.args])


def config_home() -> Path:
    """Where qwen-mlx's settings live: ``$QWEN_MLX_CONFIG``, else ``$XDG_CONFIG_HOME/qwen-mlx``,
    else ``~/.config/qwen-mlx``."""
    if os.environ.get("QWEN_MLX_CONFIG"):
        return Path(os.environ["QWEN_MLX_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "qwen-mlx"


def default_file() -> Path:
    """The MCP servers file read when present (and no ``--mcp`` is given)."""
    return config_home() / "mcp.json"


def read(path: str | Path) -> list[ServerSpec]:
    """The servers of one file; a QwenMlxError naming the file (and the server, and the
    field) when it is not a valid ``mcpServers`` file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise QwenMlxError(f"cannot read the MCP servers file {path}: "
                           f"{e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise QwenMlxError(f"{path} is not JSON: {e}") from None
    except RecursionError:
        raise QwenMlxError(f"{path} is nested too deeply to be an MCP servers file") from None
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise QwenMlxError(f"{path} needs an \"mcpServers\" object (name -> server)")
    return [spec(name, entry, path) for name, entry in servers.items()]


def read_all(paths: list[str | Path]) -> list[ServerSpec]:
    """The servers of several files, in order; a name given twice is refused."""
    out: dict[str, ServerSpec] = {}
    for path in paths:
        for server in read(path):
            if server.name in out:
                raise QwenMlxError(f"MCP server {server.name!r} is named twice ({path})")
            out[server.name] = server
    return list(out.values())


def spec(name: str, entry, path: Path) -> ServerSpec:
    where = f"{path}: server {name!r}"
    if not isinstance(entry, dict):
        raise QwenMlxError(f"{where} must be an object")
    kind = entry.get("type")
    if kind is not None and kind not in TYPES:
        raise QwenMlxError(f"{where}: type {kind!r} is not supported (stdio, or http: "
                           f"streamable HTTP)")
    if ("command" in entry) == ("url" in entry):
        raise QwenMlxError(f"{where} needs a \"command\" (stdio) or a \"url\" (HTTP), not "
                           f"{'both' if 'command' in entry else 'neither'}")
    http = "url" in entry
    if kind is not None and (TYPES[kind] == "http") != http:
        raise QwenMlxError(f"{where}: type {kind!r} does not match its "
                           f"{'url' if http else 'command'}")
    unknown = set(entry) - (HTTP_KEYS if http else STDIO_KEYS)
    if unknown:
        raise QwenMlxError(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(sorted(unknown))}")
    common = common_fields(entry, where)
    if http:
        url = text(entry["url"], where, "url")
        if not url.startswith(("http://", "https://")):
            raise QwenMlxError(f"{where}: url must start with http:// or https://")
        return ServerSpec(name, url=url, headers=strings(entry.get("headers", {}), where,
                                                         "headers"), **common)
    args = entry.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise QwenMlxError(f"{where}: args must be a list of strings")
    cwd = entry.get("cwd")
    return ServerSpec(name, command=text(entry["command"], where, "command"),
                      args=tuple(expand(a, where, "args") for a in args),
                      env=strings(entry.get("env", {}), where, "env"),
                      cwd=None if cwd is None else text(cwd, where, "cwd"), **common)


def common_fields(entry: dict, where: str) -> dict:
    """``disabled``, the pre-approved tools and the call timeout, checked."""
    disabled = entry.get("disabled", False)
    if not isinstance(disabled, bool):
        raise QwenMlxError(f"{where}: disabled must be true or false")
    approved = []
    for key in ("autoApprove", "alwaysAllow"):
        names = entry.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise QwenMlxError(f"{where}: {key} must be a list of tool names")
        approved += [n for n in names if n not in approved]
    timeout = entry.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise QwenMlxError(f"{where}: timeout must be a number of seconds above 0")
        if timeout > MAX_TIMEOUT:
            raise QwenMlxError(f"{where}: timeout {timeout:g} is over an hour; it is in "
                               f"seconds (not milliseconds)")
        timeout = float(timeout)
    return {"disabled": disabled, "auto_approve": tuple(approved), "timeout": timeout}


def expand(value: str, where: str, key: str) -> str:
    """``${VAR}``, ``${env:VAR}`` and ``${VAR:-default}`` replaced by the environment's
    values; a variable that is not set (and has no default) is refused by name."""
    def value_of(found: re.Match) -> str:
        name, default = found[1], found[2]
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise QwenMlxError(f"{where}: {key} uses ${{{name}}}, which is not set in the "
                           f"environment")
    return VARIABLE.sub(value_of, value)


def text(value, where: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise QwenMlxError(f"{where}: {key} must be non-empty text")
    value = expand(value, where, key)
    if not value:
        raise QwenMlxError(f"{where}: {key} is empty once its variables are replaced")
    return value


def strings(value, where: str, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise QwenMlxError(f"{where}: {key} must map names to text")
    return {k: expand(v, where, key) for k, v in value.items()}
