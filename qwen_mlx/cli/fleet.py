"""The models `qwen-mlx serve` serves beside its first (:mod:`qwen_mlx.serve.fleet`): the
model cache by name, the further MODELs of the command line, and the models of a --models
file, each Server made with its own options."""

from __future__ import annotations

from pathlib import Path

from .console import open_model
from .models_file import ModelEntry


def fleet_of(server, recipe: str, memory: dict, keep_alive: float | None,
             max_models: int | None, settings: dict, *, more: tuple[str, ...] = (),
             entries: list[ModelEntry] = ()):
    """The fleet around ``server``: the cache's models by name ("NAME" for the --recipe
    conversion, "NAME:RECIPE" for each), loaded with the command line's options on first
    request; ``more`` (serve A B ...) loaded now and kept until memory needs the room; the
    --models file's, by their names, with their own options (pinned ones loaded now)."""
    from .. import load
    from ..hub import cache
    from ..hub import resolver as hub
    from ..models.recipes import parse_recipe
    from ..serve import Server
    from ..serve.fleet import Catalog, Fleet
    from .console import convert_with_progress

    served = server.model.path.resolve()
    catalog = Catalog()
    for m in cache.list_models():
        if not m.complete or m.path.resolve() == served:
            continue
        if m.recipe == recipe:
            catalog.folders.setdefault(m.name, m.path)
        catalog.folders.setdefault(f"{m.name}:{m.recipe}", m.path)
    by_name = {e.name: e for e in entries}
    for e in entries:  # resolved (converted if need be) now, as serve's MODEL is
        spec = hub.resolve(e.model, parse_recipe(e.recipe or recipe), convert_with_progress)
        catalog.folders[e.name] = spec.folder
        if e.keep_alive != "default":
            catalog.keep[e.name] = e.keep_alive
        catalog.patterns.update({alias: e.name for alias in e.aliases})
    plan = server.model.plan  # its machine budget: what --memory says, or what there is
    budget = plan.machine.budget_bytes if plan is not None else 1 << 62

    def open_one(name: str, folder: Path) -> "Server":
        entry = by_name.get(name)
        if entry is None:
            return Server(load(folder, **memory), name, **settings)
        return entry_server(entry, folder, memory, settings)

    fleet = Fleet(server, catalog, open_one, budget=budget, keep_alive=keep_alive,
                  max_models=max_models, settings=settings, recipe=recipe)
    for spec in more:
        fleet.add(Server(open_model(spec, recipe=recipe, **memory), served_name(spec),
                         **settings))
    for e in entries:
        if e.pinned:
            fleet.add(entry_server(e, catalog.folders[e.name], memory, settings), pinned=True)
    return fleet


def entry_server(entry: ModelEntry, folder: Path, memory: dict, settings: dict):
    """A --models file's model, loaded with its options over the command line's."""
    from .. import load
    from ..errors import QwenMlxError
    from ..serve import Server

    draft = None
    if entry.speculation.get("draft"):
        try:
            draft = load(entry.speculation["draft"])
        except QwenMlxError as e:
            raise QwenMlxError(f"[models.{entry.name}] draft: {e}") from None
    llm = load(folder, **{**memory, **entry.load}, draft=draft)
    options = {k: v for k, v in entry.speculation.items() if k != "draft"}
    own = {"parallel": entry.parallel} if entry.parallel else {}
    return Server(llm, entry.name, **{**settings, **own}, aliases=entry.aliases,
                  speculation=server_speculation(llm, options, draft))


def server_speculation(llm, options: dict, draft):
    """--draft (loaded by ``open_draft``; its vocabulary checked here), --draft-tokens,
    --lookup -> the server's default speculative decoding (a request's ``speculative``
    field overrides it)."""
    from ..serve.speculative import Speculation
    from .console import speculative_kwargs

    kwargs = speculative_kwargs(options, draft)
    if not kwargs:
        return Speculation()
    checked = llm.speculative(kwargs.get("draft"), kwargs.get("lookup"),
                              kwargs.get("draft_tokens"))
    return Speculation("draft" if checked.draft is not None else "lookup", checked.tokens,
                       checked.draft)


def served_name(model: str | None) -> str:
    """The model's name in the API: a folder's name, else the hub id (or the default)."""
    from ..hub.resolver import DEFAULT_MODEL

    return Path(model).name if model and Path(model).expanduser().is_dir() else \
        (model or DEFAULT_MODEL)
