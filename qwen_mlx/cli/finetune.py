"""`qwen-mlx finetune`: LoRA adapters (QLoRA on a 4-bit model), resumable, with progress."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import QwenMlxError
from ..finetune.config import TARGETS, TrainConfig, parse_targets, read_config_file
from ..finetune.ranks import PEER_TIMEOUT
from ..system.machine import GIB
from .console import convert_with_progress, err, stop_on_ctrl_c
from .options import MODEL_HELP, memory_option, model_argument

D = TrainConfig()


def _flag(*names: str, **kwargs):
    """An option whose default stays None, so only what the user typed overrides the config
    file (or, on --resume, the checkpoint)."""
    return click.option(*names, default=None, **kwargs)


@click.command(help=f"""Train LoRA adapters on JSONL data (on a 4-bit model this is QLoRA).

DATA is a .jsonl file or a folder with train.jsonl and valid.jsonl; each line holds
"messages" (optionally "tools"), "prompt"/"completion", or "text". Loss is on every assistant
turn. Checkpoints go into the output folder; after an interruption, run the same command with
--resume. {MODEL_HELP}""")
@model_argument
@_flag("--data", help="Training data: a .jsonl file or a folder with train.jsonl/valid.jsonl.")
@_flag("-o", "--output", help="Adapter folder to write (adapters.safetensors, "
       "adapter_config.json, metrics.jsonl, checkpoints/).")
@click.option("-c", "--config", "config_file", type=click.Path(path_type=Path),
              help="A YAML or TOML file with any of these settings (flags win).")
@_flag("--resume", is_flag=True, help="Continue the run in the output folder from its last "
       "checkpoint, with its settings.")
@_flag("--recipe", help=f"Recipe when MODEL must be converted first [default: {D.recipe}].")
@_flag("--rank", type=click.IntRange(min=1), help=f"LoRA rank [default: {D.rank}].")
@_flag("--alpha", type=float, help=f"LoRA alpha; the update is scaled by alpha/rank "
       f"[default: {D.alpha:g}].")
@_flag("--dropout", type=float, help=f"LoRA dropout [default: {D.dropout:g}].")
@_flag("--layers", type=click.IntRange(min=1), help="Adapt the last N layers [default: all].")
@_flag("--targets", help=f"Projections to adapt [default: {','.join(TARGETS)}].")
@_flag("--lr", type=float, help=f"Peak learning rate, after warmup, then cosine decay "
       f"[default: {D.lr:g}].")
@_flag("--warmup", type=click.IntRange(min=0), help="Warmup steps [default: 5% of the run, "
       "at most 100].")
@_flag("--batch-size", type=click.IntRange(min=1), help=f"Examples per batch "
       f"[default: {D.batch_size}].")
@_flag("--grad-accum", type=click.IntRange(min=1), help="Batches per optimizer step "
       f"[default: {D.grad_accum}].")
@_flag("--max-seq-len", type=click.IntRange(min=2), help=f"Longest example in tokens "
       f"[default: {D.max_seq_len}].")
@_flag("--overlong", type=click.Choice(["truncate", "drop"]), help="What to do with longer "
       f"examples [default: {D.overlong}].")
@_flag("--iters", type=click.IntRange(min=1), help="Optimizer steps to train.")
@_flag("--epochs", type=click.FloatRange(min=0, min_open=True),
       help="Passes over the data [default: 3, when --iters is not given].")
@_flag("--grad-checkpoint/--no-grad-checkpoint", help="Recompute activations in the "
       "backward pass: much less memory, more compute.")
@_flag("--seed", type=int, help=f"Seed for adapter init, data order and dropout "
       f"[default: {D.seed}].")
@_flag("--train-on-all/--assistant-only", help="Train on every token, not just the "
       "assistant's [default: assistant only].")
@_flag("--valid-split", type=click.FloatRange(0, 1, max_open=True), help="Share held out "
       f"for validation when there is no valid.jsonl [default: {D.valid_split:g}].")
@_flag("--val-every", type=click.IntRange(min=1), help=f"Validate every N steps "
       f"[default: {D.val_every}].")
@_flag("--val-batches", type=click.IntRange(min=1), help="Most batches per validation, spread "
       f"over the lengths [default: {D.val_batches}].")
@_flag("--save-every", type=click.IntRange(min=1), help=f"Checkpoint every N steps "
       f"[default: {D.save_every}].")
@memory_option
@click.option("--force", is_flag=True, help="Train even if the memory estimate says it will "
              "not fit.")
@click.option("--hostfile", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Train on several Macs: mlx.launch's hostfile (JSON, one {\"ssh\", "
              "\"ips\"} per machine). --batch-size is then the global batch.")
@click.option("--local-ranks", type=click.IntRange(min=2), help="Train as N ranks on this "
              "machine (over loopback): how to try a several-Mac run on one.")
@click.option("--peer-timeout", type=click.FloatRange(min=0, min_open=True),
              default=PEER_TIMEOUT, show_default=True,
              help="Seconds a rank waits for the others before it stops the run.")
@click.pass_context
def finetune(ctx: click.Context, model: str | None, config_file: Path | None,
             resume: bool | None, memory: str | None, force: bool, hostfile: Path | None,
             local_ranks: int | None, peer_timeout: float, **flags) -> None:
    from ..finetune.ranks import Ranks
    from ..finetune.run import Stopped, prepare
    from ..finetune.trainer import StepReport, ValReport

    if hostfile is not None or local_ranks is not None:
        _launch(ctx, hostfile, local_ranks)
        return
    ranks = Ranks.join(peer_timeout)
    if not ranks.leader:
        err.quiet = True  # rank 0 speaks for the run; errors still reach stderr
    settings = read_config_file(config_file) if config_file else {}
    if model is not None:
        flags["model"] = model
    if isinstance(flags.get("targets"), str):
        flags["targets"] = parse_targets(flags["targets"])
    settings.update({k: v for k, v in flags.items() if v is not None})
    try:
        run = prepare(settings, resume_run=bool(resume), force=force, memory=memory,
                      convert=convert_with_progress, ranks=ranks)
    except QwenMlxError as e:
        raise QwenMlxError(f"{ranks.name()}: {e}" if ranks.size > 1 and
                           not str(e).startswith("rank ") else str(e)) from None
    _describe(run)
    if run.step >= run.steps:
        err.print(f"already trained: {run.steps} steps; the adapter is in {run.output}")
        return
    stopped = None
    with stop_on_ctrl_c() as asked, _progress(run) as (bar, task):
        for report in run.train(stop=asked):
            if isinstance(report, StepReport):
                bar.update(task, completed=report.step, loss=f"{report.loss:.4f}",
                           rate=f"{report.tokens_per_second:,.0f} tok/s",
                           peak=f"{report.peak_bytes / GIB:.2f} GiB")
            elif isinstance(report, ValReport):
                bar.console.print(f"step {report.step}: validation loss {report.loss:.4f}")
            elif isinstance(report, Stopped):
                stopped = report.step
    if stopped is not None:
        err.print(f"stopped at step {stopped} of {run.steps}; checkpoint saved. Continue with "
                  f"the same command and --resume.")
        raise SystemExit(130)
    err.print(f"adapter: {run.output} ({run.steps} steps; metrics in "
              f"{run.output / 'metrics.jsonl'})")
    if ranks.leader:
        click.echo(str(run.output))


def _launch(ctx: click.Context, hostfile: Path | None, local: int | None) -> None:
    """Run this same command on every rank through mlx.launch."""
    from ..finetune import launch
    from ..finetune.run import split_over

    if hostfile is not None and local is not None:
        raise QwenMlxError("--hostfile and --local-ranks contradict each other; give one")
    if not ctx.params.get("resume"):  # a resume's batch is the checkpoint's: the ranks check
        config = ctx.params.get("config_file")
        batch = ctx.params.get("batch_size") or \
            (read_config_file(config).get("batch_size") if config else None) or D.batch_size
        split_over(int(batch), local or len(launch.hosts_of(hostfile)))
    args = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in ("hostfile", "local_ranks") or value is None or \
                ctx.get_parameter_source(param.name) is click.core.ParameterSource.DEFAULT:
            continue
        if isinstance(param, click.Argument):
            args.append(str(value))
        elif param.is_flag:
            if param.secondary_opts and not value:
                args.append(param.secondary_opts[0])
            elif value:
                args.append(param.opts[-1])
        else:
            args += [param.opts[-1], str(value)]
    outcome = launch.run(args, hostfile=hostfile, local=local)
    if outcome.message:
        raise QwenMlxError(outcome.message)
    if outcome.code:
        raise SystemExit(outcome.code)


def _describe(run) -> None:
    d, c = run.data, run.config
    cut = []
    if d.truncated:
        cut.append(f"{d.truncated} truncated to {c.max_seq_len} tokens")
    if d.dropped:
        cut.append(f"{d.dropped} longer than {c.max_seq_len} tokens dropped")
    if d.empty:
        cut.append(f"{d.empty} dropped (no trained token within {c.max_seq_len} tokens)")
    valid = f"{d.valid} validation" + (" (held out from train)" if d.split_from_train else "")
    err.print(f"data: {d.train} training, {valid} examples ({d.format})"
              + (f"; {', '.join(cut)}" if cut else ""), soft_wrap=True)
    err.print(f"[dim]model {run.model_folder}; rank {c.rank}, alpha {c.alpha:g}, "
              f"{','.join(c.targets)}; memory: {run.memory.describe()}"
              f"{' per machine' if run.ranks.size > 1 else ''}[/dim]", soft_wrap=True)
    if run.ranks.size > 1:
        err.print(f"{run.ranks.size} machines ({', '.join(run.ranks.hosts)}): "
                  f"{c.batch_size // run.ranks.size} of each batch of {c.batch_size} each")
    if run.step:
        err.print(f"resuming at step {run.step} of {run.steps}")


@contextlib.contextmanager
def _progress(run) -> Iterator[tuple[Progress, int]]:
    columns = (TextColumn("step {task.completed}/{task.total}"), BarColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
               TextColumn("peak {task.fields[peak]}"), TimeRemainingColumn())
    with Progress(*columns, console=err) as bar:
        yield bar, bar.add_task("train", total=run.steps, completed=run.step, loss="-",
                                rate="", peak="")


