"""The package's folders are layers and imports flow one way: down. Every import of ours in
every module (lazy ones inside functions too) is read from the source and checked against
the order each folder's __init__ docstring states."""

from __future__ import annotations

import ast
from pathlib import Path

import qwen_mlx

PACKAGE = Path(qwen_mlx.__file__).parent

# Lowest first. A module may import from its own layer's folder and from lower layers.
LAYERS = [
    {"errors", "units"},  # the vocabulary every layer shares
    {"storage"},  # files: atomic outputs, leftovers, safetensors streams, qwen-mlx's home
    {"models"},  # a model's files: shapes, checkpoints, recipes, sizes, card, loading
    {"system"},  # this machine and the arithmetic of memory
    {"evaluate"},  # the exact joint reference/candidate pass, the held-out text
    {"engine"},  # generation: caches, sampling, batching, constraints, the memory plan
    {"tools"},  # tool calls, MCP servers, Python functions, the approval loop
    {"model"},  # the Model object over the engine
    {"quant"},  # conversion, GPTQ, sensitivities, allocation, distillation (its teacher
    #             generates with the Model)
    {"hub"},  # from what a user types to a local MLX folder: download, convert, cache
    {"__init__"},  # the public API: qwen_mlx.load, qwen_mlx.generate, ...
    {"chat", "serve", "finetune", "benchmark", "testing"},  # the verbs' own machinery
    {"cli"},  # the click layer
    {"__main__"},
]
RANK = {name: n for n, layer in enumerate(LAYERS) for name in layer}
# Peers that use each other (the chat page is served by the server's app).
PEERS = {("chat", "serve"), ("units", "errors")}


def part_of(module: str) -> str:
    """The layer name of a module path relative to the package (``quant.gptq`` -> quant)."""
    return module.split(".")[0] if module else "__init__"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module relative to the package) for every import of ours."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    package = list(rel[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # from . import a, b: the names are modules or API
                    for alias in node.names:
                        name = ".".join(base + [alias.name])
                        is_module = (PACKAGE / Path(*name.split("."))).with_suffix(".py") \
                            .is_file() or (PACKAGE / Path(*name.split("."))).is_dir()
                        if alias.name != "__version__":
                            out.append((node.lineno, name if is_module else target))
                    continue
                out.append((node.lineno, target))
            elif node.module and node.module.startswith("qwen_mlx"):
                out.append((node.lineno, node.module.removeprefix("qwen_mlx").lstrip(".")))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.removeprefix("qwen_mlx").lstrip("."))
                    for a in node.names if a.name.startswith("qwen_mlx")]
    return out


def test_every_module_belongs_to_a_layer():
    names = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert names == set(RANK), names ^ set(RANK)


def test_imports_flow_down():
    climbs = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        here = part_of(".".join(rel.parts) if rel.parts != ("__init__",) else "")
        for line, target in imports(path):
            there = part_of(target)
            if RANK[there] > RANK[here] or (RANK[there] == RANK[here] and there != here
                                            and (here, there) not in PEERS):
                climbs.append(f"{rel}.py:{line} ({here}) imports {target} ({there})")
    assert not climbs, "\n".join(climbs)


def test_the_outputs_we_own_include_every_tokenizer_file():
    """storage/ imports nothing of ours, so it lists the tokenizer's files itself."""
    from qwen_mlx.models.checkpoint import TOKENIZER_FILES
    from qwen_mlx.storage.outputs import OWN_PATTERNS

    assert set(TOKENIZER_FILES) <= set(OWN_PATTERNS)


def test_the_root_holds_only_the_api():
    """The package root: the public API, the model object, errors, units; the rest is in
    folders named for what they hold, each with a docstring saying what it may import."""
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert root == ["__init__.py", "__main__.py", "errors.py", "model.py", "units.py"]
    for folder in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"{folder.name}/__init__.py says nothing of its imports"
