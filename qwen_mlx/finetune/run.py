"""A training run from settings to adapter: data checked, model resolved, memory planned,
LoRA placed, and a loop that logs metrics and checkpoints as it goes.

``prepare`` does every check that can fail before the first step (bad data, a folder that
holds something else, a run that will not fit); ``Run.train`` is the loop. The output
folder is always either empty of adapters or holds the adapter of the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, TextIO

import mlx.core as mx

from ..hub import resolver as hub
from ..models import loader
from ..errors import QwenMlxError
from ..system.machine import this_machine
from ..engine.memory_plan import weight_bytes_of_folder
from ..models.shapes import Shape
from ..storage.leftovers import clean_folder
from ..storage.outputs import check_writable
from ..models.recipes import parse_recipe
from . import resume
from .ranks import Ranks
from .adapters import add_lora, adapter_config, save_adapter
from .batches import Batches, Fitted, fit_length
from .config import DEFAULT_EPOCHS, TRAINING_KEYS, TrainConfig
from .data import Dataset, load_data
from .memory import TrainingMemory, check
from .tokens import Encoder
from .trainer import StepReport, Trainer, ValReport

log = logging.getLogger("qwen_mlx")

METRICS_FILE = "metrics.jsonl"


@dataclass
class Stopped:
    """Training stopped early (Ctrl-C) after a completed step, with a checkpoint saved."""

    step: int


@dataclass
class DataReport:
    format: str
    train: int
    valid: int
    truncated: int
    dropped: int
    empty: int
    split_from_train: bool


def _absolute(settings: dict) -> dict:
    """Local model and data paths made absolute: a resume may start from another folder."""
    out = dict(settings)
    for key in ("model", "data"):
        if out.get(key) is not None and Path(out[key]).exists():
            out[key] = str(Path(out[key]).resolve())
    return out


def _settings(explicit: dict, output: Path, checkpoint: Path | None) -> TrainConfig:
    """The run's config: on resume (``checkpoint``), the checkpoint's, where explicit
    settings must agree."""
    explicit = _absolute(explicit)
    if checkpoint is None:
        return TrainConfig.from_dict(explicit).check()
    saved = resume.read_state(checkpoint)["config"]
    for key, value in explicit.items():
        if key in (*TRAINING_KEYS, "model") and saved.get(key) != value:
            flag = "--" + key.replace("_", "-")
            raise QwenMlxError(f"{flag} {value!r} differs from the run being resumed "
                               f"({saved.get(key)!r}); start a new output folder to change it")
    return TrainConfig.from_dict({**saved, **explicit}).check()


def _unstarted(output: Path) -> bool:
    """Whether ``output`` holds only what a run leaves before its first checkpoint (killed,
    or stopped by a full disk): a metrics log and an empty checkpoints folder (stale
    temporaries in it are cleaned first). Such a run is started again from step 0; its log
    is cut to the steps a checkpoint holds, none."""
    checkpoints = output / resume.FOLDER
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        clean_folder(checkpoints)
    names = {p.name for p in output.iterdir()}
    return bool(names) and names <= {METRICS_FILE, resume.FOLDER} and \
        (METRICS_FILE not in names or (output / METRICS_FILE).is_file()) and \
        (resume.FOLDER not in names or (checkpoints.is_dir() and not checkpoints.is_symlink()
                                        and not any(checkpoints.iterdir())))


def _check_output(output: Path, resuming: bool) -> None:
    if resuming or not output.exists():
        return
    if not output.is_dir():
        raise QwenMlxError(f"output {output} is a file")
    if _unstarted(output):
        log.info(f"{output} holds a run stopped before its first checkpoint: starting it "
                 "again")
        return
    if resume.latest(output) is not None:
        raise QwenMlxError(f"{output} holds a training run; add --resume to continue it, or "
                           f"choose another -o")
    if any(output.iterdir()):
        raise QwenMlxError(f"output {output} exists and is not empty; choose another -o")


def lora_parameter_count(shape: Shape, config: TrainConfig) -> int:
    """Trainable parameters: rank x (inputs + outputs) per adapted matrix."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    dims = {"q": (shape.hidden, q), "k": (shape.hidden, kv), "v": (shape.hidden, kv),
            "o": (q, shape.hidden), "gate": (shape.hidden, shape.intermediate),
            "up": (shape.hidden, shape.intermediate), "down": (shape.intermediate, shape.hidden)}
    layers = min(config.layers or shape.layers, shape.layers)
    return layers * sum(config.rank * sum(dims[t]) for t in config.targets)


class Run:
    """A prepared run; iterate :meth:`train` to train."""

    def __init__(self, config: TrainConfig, output: Path, folder: Path, data: DataReport,
                 memory: TrainingMemory, trainer: Trainer, settings: dict,
                 data_fingerprint: str) -> None:
        self.config, self.output, self.model_folder = config, output, folder
        self.data, self.memory, self.trainer = data, memory, trainer
        self.settings, self.data_fingerprint = settings, data_fingerprint

    @property
    def step(self) -> int:
        return self.trainer.state.step

    @property
    def steps(self) -> int:
        return self.trainer.steps

    @property
    def ranks(self) -> Ranks:
        return self.trainer.ranks

    def _save(self) -> None:
        t = self.trainer
        if not self.ranks.leader:
            return
        resume.save(self.output, t.model, t.optimizer, t.state, self.config,
                    self.data_fingerprint)
        save_adapter(self.output, t.model, self.settings)

    def _metrics(self) -> TextIO:
        """The metrics log, cut back to the checkpoint being resumed from."""
        path = self.output / METRICS_FILE
        kept = []
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= self.step:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill
        path.write_text("".join(kept))
        return open(path, "a", encoding="utf-8")

    def train(self, stop: Callable[[], bool] = lambda: False) \
            -> Iterator[StepReport | ValReport | Stopped]:
        """Yield a report per step and per validation. ``stop()`` is asked after each
        step; when it says so, a checkpoint is written and a :class:`Stopped` yielded."""
        leader = self.ranks.leader
        if leader:
            self.output.mkdir(parents=True, exist_ok=True)
        with self._metrics() if leader else open(os.devnull, "w") as log:
            for report in self.trainer.run(on_save=self._save):
                log.write(json.dumps(report.to_dict()) + "\n")
                log.flush()
                yield report
                if isinstance(report, StepReport) and report.step < self.steps and \
                        self._stopping(stop):
                    self._save()
                    yield Stopped(report.step)
                    return

    def _stopping(self, stop: Callable[[], bool]) -> bool:
        """Whether any rank was asked to stop: all stop after the same step, or none."""
        if self.ranks.size == 1:
            return stop()
        return self.ranks.sum([mx.array(float(stop()))])[0].item() > 0


def prepare(settings: dict, *, resume_run: bool = False, force: bool = False,
            convert=None, memory: str | int | None = None, ranks: Ranks | None = None) -> Run:
    """Check everything and build the run. ``settings`` holds the keys of
    :class:`TrainConfig` that were given (config file and flags); the rest are defaults,
    or, with ``resume_run``, the checkpoint's."""
    if not settings.get("output"):
        raise QwenMlxError("give an output folder (-o ADAPTER_DIR)")
    output = Path(settings["output"])
    ranks = ranks or Ranks.join()  # under mlx.launch, the Python API joins the group too
    latest = _checkpoint(output, ranks) if resume_run else None
    config = _settings(settings, output, latest)
    if ranks.leader:
        _check_output(output, resume_run)
        check_writable(output, "the adapter folder")
    split_over(config.batch_size, ranks.size)
    if not config.data:
        raise QwenMlxError("give the training data (--data FILE_OR_FOLDER)")
    dataset = load_data(config.data, valid_split=config.valid_split, seed=config.seed)
    data_fingerprint = resume.fingerprint(dataset.files)
    ranks.agree(data_fingerprint, "training data (or a different split of it)")
    if resume_run:
        resume.check_data(resume.read_state(latest), data_fingerprint, latest)

    spec = hub.resolve(config.model, parse_recipe(config.recipe), convert)
    folder = spec.folder
    shape = Shape.of(spec.config)
    if config.layers and config.layers > shape.layers:
        raise QwenMlxError(f"--layers {config.layers}: the model has {shape.layers} layers")
    tokenizer = loader.load_tokenizer(folder, spec.eos_ids)
    train, valid, report = _encode(dataset, tokenizer, config)
    steps = config.iters or math.ceil((config.epochs or DEFAULT_EPOCHS) * len(train)
                                      / config.grad_accum)

    cast = loader.compute_dtype("auto")  # float32 on the CPU backend; stored types on Metal
    per_machine = replace(config, batch_size=config.batch_size // ranks.size)
    need = check(shape, per_machine, train.longest(), force, machine=this_machine(memory),
                 weights=weight_bytes_of_folder(folder, cast.size if cast else None),
                 trainable=lora_parameter_count(shape, config),
                 dtype_bytes=cast.size if cast else 2, where=ranks.name() if ranks.size > 1
                 else None)

    model, _ = loader.load_weights(folder)
    mx.random.seed(config.seed)  # the adapters' initial values
    adapter_settings = adapter_config(config, shape.layers, config.model or hub.DEFAULT_MODEL)
    add_lora(model, adapter_settings)
    trainer = Trainer(model, config, train, valid, steps, ranks)
    if resume_run:
        trainer.state = resume.restore(latest, model, trainer.optimizer)
    return Run(config, output, folder, report, need, trainer, adapter_settings,
               data_fingerprint)


def split_over(batch_size: int, ranks: int) -> None:
    """``--batch-size`` is the global batch: it must split evenly over the ranks."""
    if batch_size % ranks:
        lower, upper = batch_size // ranks * ranks, -(-batch_size // ranks) * ranks
        sizes = f"{lower} or {upper}" if lower else f"{upper}"
        raise QwenMlxError(f"--batch-size {batch_size} does not split over {ranks} ranks "
                           f"(it is the global batch); use {sizes}")


def _checkpoint(output: Path, ranks: Ranks) -> Path:
    """The checkpoint a resume starts from: rank 0's newest, sent to the other ranks (their
    machines need not hold the output folder) into a temporary folder that goes when the
    process ends (it was left behind, a copy of the adapters and optimizer state per
    resume and rank)."""
    latest = resume.latest(output) if ranks.leader else None
    if ranks.leader and latest is None:
        why = "the run stopped before its first; the same command without --resume starts " \
            "it again" if output.is_dir() and _unstarted(output) else "no checkpoint"
        raise QwenMlxError(f"nothing to resume in {output} ({why})")
    if ranks.size == 1 or ranks.leader:
        return ranks.send_files(latest, list(resume.FILES), Path())  # rank 0: sends
    import atexit
    import shutil
    import tempfile

    into = Path(tempfile.mkdtemp(prefix="qwen-mlx-resume-"))
    atexit.register(shutil.rmtree, into, True)
    return ranks.send_files(latest, list(resume.FILES), into / "checkpoint")


def _encode(dataset: Dataset, tokenizer, config: TrainConfig) \
        -> tuple[Batches, Batches | None, DataReport]:
    encoder = Encoder(tokenizer, train_on_all=config.train_on_all)
    fitted: list[Fitted] = []
    for part in (dataset.train, dataset.valid):
        fitted.append(fit_length([encoder.encode(dataset.format, e) for e in part],
                                 config.max_seq_len, config.overlong))
    train, valid = fitted
    if not train.examples:
        raise QwenMlxError(f"no training example is left after --max-seq-len "
                           f"{config.max_seq_len} ({train.dropped + train.empty} dropped)")
    report = DataReport(dataset.format, len(train.examples), len(valid.examples),
                        train.truncated + valid.truncated, train.dropped + valid.dropped,
                        train.empty + valid.empty, dataset.split_from_train)
    return (Batches(train.examples, config.batch_size, config.seed),
            Batches(valid.examples, config.batch_size, config.seed) if valid.examples else None,
            report)


def finetune(model: str | None = None, data: str | Path | None = None,
             output: str | Path | None = None, *, resume_run: bool = False,
             force: bool = False, **settings) -> Path:
    """Train LoRA adapters and return the output folder (the Python face of
    ``qwen-mlx finetune``). Keyword arguments are :class:`TrainConfig` fields."""
    given = {k: str(v) for k, v in dict(model=model, data=data, output=output).items()
             if v is not None}
    run = prepare({**given, **settings}, resume_run=resume_run, force=force)
    for _ in run.train():
        pass
    return run.output
