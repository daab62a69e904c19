"""Job configs: one YAML file with ``data``, ``model`` and ``train`` sections, plus ``key=value`` overrides."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from crossrank.features.errors import InputError
from crossrank.features.storage import as_path
from crossrank.models.fusion import FUSIONS, GATE_ACTS, PLACEMENTS
from crossrank.models.ranker import RankerConfig
from crossrank.models.sequence import SEQUENCE_ENCODERS

SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "adam", "sgd")
# ``{date}`` or ``{date-N}`` (N days before data.date) in paths of a scheduled job.
# Validation metrics that can pick the best checkpoint, and whether higher is better.
SELECT_METRICS: dict[str, bool] = {"auc": True, "ne": False, "logloss": False}
# Settings that were replaced, and what to write instead (an old config gets this as its error's fix).
RENAMED = {
    "shuffle_units": "use data.shuffle_buffer_mb (MB of rows mixed per rank; the default mixes a whole ml-1m share)"
}
DATE_TEMPLATE = re.compile(r"\{date(?:-(\d+))?\}")


@dataclass
class DataConfig:
    """Where the data is and how it is batched.

    Args:
        spec: feature spec YAML.
        train / valid / test: per split, a Parquet file, a folder, a glob pattern (``events/*/part-*.parquet``)
            or a list of them (valid/test may be empty to skip). ``{date}`` and ``{date-N}`` (N days earlier)
            are filled from ``date``, e.g. ``events/date={date}``.
        batch_size: rows per batch per rank.
        eval_batch_size: rows per batch per rank in evaluation.
        shuffle_buffer_mb: memory (MB per rank) of mapped training rows mixed together each epoch: units
            (row groups) are read in a random order into the buffer, whose rows are then yielded in a random
            order. At the default (1 GiB) a rank's share of ml-1m fits, so each epoch is a full permutation.
        ranking: the sampled ranking protocol's data (``crossrank prepare ranking``), for HR@10 / NDCG@10.
        ranking_group_size: rows per ranking group (1 positive + negatives).
        date: the day a scheduled job runs for (``YYYY-MM-DD``); fills ``{date}`` / ``{date-N}`` in the data
            paths, ``run_dir`` and ``train.init_from``.
    """

    spec: str = "features/specs/synthetic.yaml"
    train: str | list[str] = ""
    valid: str | list[str] = ""
    test: str | list[str] = ""
    batch_size: int = 512
    eval_batch_size: int = 2048
    shuffle_buffer_mb: float = 1024
    ranking: str = ""
    ranking_group_size: int = 100
    date: str = ""


@dataclass
class TrainConfig:
    """Optimisation and loop settings.

    Args:
        epochs: passes over the training data.
        max_steps: stop each epoch after this many steps (0: no limit), for smoke runs.
        sparse_optimizer: fused in-backward optimizer of the embedding tables.
        sparse_lr / dense_lr: learning rates (dense: Adam).
        sparse_weight_decay: L2 penalty of the embedding rows a step touches (in the fused optimizer).
        dense_weight_decay: decoupled weight decay of the dense parameters (AdamW instead of Adam when > 0).
        seed: seeds weights and shuffling.
        log_every: progress bar update interval in steps.
        checkpoint_every: write a checkpoint every N steps (0: only at the end); always one at the end.
        keep_checkpoints: complete checkpoints kept in ``run_dir/checkpoints``.
        resume: ``auto`` (continue from the run folder's latest complete checkpoint if there is one),
            ``never``, or the path of a checkpoint / run folder to continue from.
        init_from: warm start: load the model of another run's checkpoint (or run folder: its best, else
            latest) into this new run; step, epoch, reader position and metrics start fresh. Ignored when
            the run resumes itself.
        init_optimizer: with ``init_from``, load the optimizer state too.
        init_strict: with ``init_from``, any difference between the checkpoint and the model is an error.
        select_metric: validation metric that picks the best checkpoint (``auc``, ``ne``, ``logloss``,
            ``auc/<domain>``); higher is better for AUCs, lower for the others.
        early_stop_patience: stop after this many validation rounds without a better ``select_metric``
            (0: never stop early).
        validate_every: also validate every N steps (0: only at epoch ends).
        tensorboard: write scalars to ``run_dir/tensorboard`` (rank 0).
    """

    epochs: int = 1
    max_steps: int = 0
    sparse_optimizer: str = "rowwise_adagrad"
    sparse_lr: float = 0.05
    dense_lr: float = 1e-3
    sparse_weight_decay: float = 0.0
    dense_weight_decay: float = 0.0
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    resume: str = "auto"
    init_from: str = ""
    init_optimizer: bool = False
    init_strict: bool = False
    select_metric: str = "auc"
    early_stop_patience: int = 0
    validate_every: int = 0
    tensorboard: bool = True


@dataclass
class JobConfig:
    """A whole training job. ``run_dir`` receives metrics.json, the resolved config and logs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: RankerConfig = field(default_factory=RankerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str = "runs/default"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce_paths(value: Any, where: str) -> str | list[str]:
    """A path field: one string, or a list of strings (an override ``[a, b]`` is parsed as YAML)."""
    if isinstance(value, str) and value.strip().startswith("[") and value.strip().endswith("]"):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:  # e.g. [a/date={date-1}, a/date={date}]: braces are YAML flow syntax
            value = [v.strip().strip("'\"") for v in value.strip()[1:-1].split(",") if v.strip()]
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise InputError(
        f"{where} = {value!r} is not a path or a list of paths.", fix="e.g. data/train or [a/, b/*.parquet]."
    )


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Parse override strings and check YAML values against the field type."""
    if typ == str | list[str]:
        return _coerce_paths(value, where)
    if isinstance(value, str) and typ is not str:
        value = yaml.safe_load(value)
    ok = {
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        bool: lambda v: isinstance(v, bool),
    }.get(typ, lambda v: isinstance(v, list) and all(isinstance(x, int) for x in v))
    if not ok(value):
        raise InputError(
            f"{where} = {value!r} is not a valid {getattr(typ, '__name__', typ)}.", fix="fix the value."
        )
    return float(value) if typ is float else value


def _section(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise InputError(f"section '{where}' must be a mapping.", fix="see configs/demo.yaml.")
    hints = get_type_hints(cls)
    unknown = set(raw) - set(hints)
    renamed = {k: RENAMED[k] for k in unknown if k in RENAMED}
    if renamed:
        raise InputError(
            f"key(s) {sorted(renamed)} in section '{where}' were replaced.",
            fix="; ".join(f"{old}: {new}" for old, new in sorted(renamed.items())) + ".",
        )
    if unknown:
        raise InputError(
            f"unknown key(s) {sorted(unknown)} in section '{where}'.", fix=f"allowed keys: {sorted(hints)}."
        )
    return cls(
        **{
            k: _section(hints[k], v, f"{where}.{k}")
            if dataclasses.is_dataclass(hints[k])
            else _coerce(v, hints[k], f"{where}.{k}")
            for k, v in raw.items()
        }
    )


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> JobConfig:
    """Read a job config (YAML) and apply ``section.key=value`` overrides (values parsed as YAML).

    Example::

        cfg = load_config("configs/demo.yaml", ["train.epochs=2", "model.over_arch_layer_sizes=[64,1]"])
    """
    raw: dict[str, Any] = {}
    where = str(path) if path else "<defaults>"
    if path is not None:
        p = as_path(path)  # a local path or a URI (s3://..., crossrank.features.storage)
        if not p.is_file():
            raise InputError(
                "config file not found.", where=where, fix="pass --config PATH to a YAML job config."
            )
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"not valid YAML ({e}).", where=where, fix="fix the YAML syntax.") from None
        if not isinstance(raw, dict):
            raise InputError("a config must be a YAML mapping.", where=where, fix="see configs/demo.yaml.")
    return config_from_dict(raw, where, overrides)


def config_from_dict(raw: dict[str, Any], where: str, overrides: list[str] | None = None) -> JobConfig:
    """A validated :class:`JobConfig` from its dict form (e.g. the one saved in a checkpoint)."""
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise InputError(f"override {item!r} is not SECTION.KEY=VALUE.", fix="e.g. --set train.epochs=2.")
        target = raw
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise InputError(
                    f"override {item!r}: '{part}' is not a section.", where=where, fix="check the key."
                )
        target[parts[-1]] = value
    unknown = set(raw) - {"data", "model", "train", "run_dir"}
    if unknown:
        raise InputError(
            f"unknown section(s) {sorted(unknown)}.", where=where, fix="use data, model, train, run_dir."
        )
    try:
        cfg = JobConfig(
            data=_section(DataConfig, raw.get("data"), "data"),
            model=_section(RankerConfig, raw.get("model"), "model"),
            train=_section(TrainConfig, raw.get("train"), "train"),
            run_dir=str(raw.get("run_dir", JobConfig.run_dir)),
        )
    except InputError as e:
        raise InputError(e.what, where=where, fix=e.fix) from None
    _fill_dates(cfg, where)
    _validate(cfg, where)
    return cfg


def fill_date(text: str, date: datetime.date | None, where: str) -> str:
    """``{date}`` / ``{date-N}`` in ``text`` replaced by ISO dates (``date`` minus N days)."""

    def day(m: re.Match[str]) -> str:
        if date is None:
            raise InputError(
                f"{where} = {text!r} holds a {{date}} template but data.date is not set.",
                fix="pass --set data.date=YYYY-MM-DD (the day the job runs for).",
            )
        return (date - datetime.timedelta(days=int(m.group(1) or 0))).isoformat()

    return DATE_TEMPLATE.sub(day, text)


def _fill_dates(cfg: JobConfig, where: str) -> None:
    """Fill the date templates of every path-like field in place."""
    date = None
    if cfg.data.date:
        try:
            date = datetime.date.fromisoformat(cfg.data.date)
        except ValueError:
            raise InputError(
                f"data.date {cfg.data.date!r} is not a date.", where=where, fix="use YYYY-MM-DD."
            ) from None
    for name in ("train", "valid", "test"):
        value: str | list[str] = getattr(cfg.data, name)
        filled = (
            fill_date(value, date, f"data.{name}")
            if isinstance(value, str)
            else [fill_date(v, date, f"data.{name}") for v in value]
        )
        setattr(cfg.data, name, filled)
    cfg.data.ranking = fill_date(cfg.data.ranking, date, "data.ranking")
    cfg.run_dir = fill_date(cfg.run_dir, date, "run_dir")
    cfg.train.init_from = fill_date(cfg.train.init_from, date, "train.init_from")
    cfg.train.resume = fill_date(cfg.train.resume, date, "train.resume")


def _validate(cfg: JobConfig, where: str) -> None:
    def bad(msg: str, fix: str) -> None:
        raise InputError(msg, where=where, fix=fix)

    if cfg.model.sequence_encoder not in SEQUENCE_ENCODERS:
        bad(
            f"model.sequence_encoder {cfg.model.sequence_encoder!r} is unknown.",
            f"use one of {list(SEQUENCE_ENCODERS)}.",
        )
    if cfg.train.sparse_optimizer not in SPARSE_OPTIMIZERS:
        bad(
            f"train.sparse_optimizer {cfg.train.sparse_optimizer!r} is unknown.",
            f"use one of {SPARSE_OPTIMIZERS}.",
        )
    if not cfg.model.over_arch_layer_sizes or cfg.model.over_arch_layer_sizes[-1] != 1:
        bad("model.over_arch_layer_sizes must end with 1 (the logit).", "e.g. [128, 64, 1].")
    if len(cfg.model.over_arch_layer_sizes) < 2:
        bad("model.over_arch_layer_sizes needs at least two layers.", "e.g. [64, 1].")
    if not cfg.data.train:
        bad("data.train is not set.", "set data.train to a Parquet file or folder.")
    for name in ("batch_size", "eval_batch_size"):
        if getattr(cfg.data, name) < 1:
            bad(f"data.{name} must be >= 1.", f"set data.{name}.")
    if cfg.train.epochs < 1:
        bad("train.epochs must be >= 1.", "set train.epochs.")
    for name in ("early_stop_patience", "validate_every", "sparse_weight_decay", "dense_weight_decay"):
        if getattr(cfg.train, name) < 0:
            bad(f"train.{name} must be >= 0.", f"set train.{name} (0 turns it off).")
    if cfg.train.select_metric not in SELECT_METRICS and not cfg.train.select_metric.startswith("auc/"):
        bad(
            f"train.select_metric {cfg.train.select_metric!r} is unknown.",
            f"use one of {list(SELECT_METRICS)} or auc/<domain>.",
        )
    if (cfg.train.init_optimizer or cfg.train.init_strict) and not cfg.train.init_from:
        bad("train.init_optimizer / init_strict apply to a warm start.", "set train.init_from too.")
    fusion = cfg.model.fusion
    for name, allowed in (("kind", FUSIONS), ("gate_act", GATE_ACTS), ("placement", PLACEMENTS)):
        if getattr(fusion, name) not in allowed:
            bad(f"model.fusion.{name} {getattr(fusion, name)!r} is unknown.", f"use one of {list(allowed)}.")
    if fusion.param_matched and fusion.kind != "none":
        bad("model.fusion.param_matched widens the 'none' baseline only.", "set model.fusion.kind=none.")
    if fusion.placement == "stack" and (
        cfg.model.sequence_encoder != "elastic" or fusion.kind not in ("gca", "cross_attention")
    ):
        bad(
            "model.fusion.placement 'stack' fuses between ELASTIC layers.",
            "use sequence_encoder elastic with gca/cross_attention.",
        )
    enc = cfg.model.encoder
    for name in ("num_slots", "num_heads", "num_layers", "recency_buckets", "memory_topk", "ffn_mult"):
        if getattr(enc, name) < 1:
            bad(f"model.encoder.{name} must be >= 1.", f"set model.encoder.{name}.")
    root = math.isqrt(enc.memory_size) if enc.memory_size >= 0 else -1
    if enc.memory_size and (root * root != enc.memory_size or root < enc.memory_topk):
        bad(
            f"model.encoder.memory_size {enc.memory_size} must be 0 or a perfect square n^2 with n >= memory_topk.",
            "e.g. 4096 (64^2), 65536 (256^2) or 1048576 (1024^2).",
        )
    if enc.memory_key_dim < 2 or enc.memory_key_dim % 2:
        bad("model.encoder.memory_key_dim must be an even number >= 2.", "e.g. 32.")
    if not enc.query_init_std > 0:
        bad("model.encoder.query_init_std must be > 0.", "e.g. 1.0 (a query's scale) or 0.02.")
    if any(w < 1 for w in enc.mean_windows):
        bad(
            f"model.encoder.mean_windows {enc.mean_windows} must all be >= 1 (events).",
            "e.g. [4, 16, 64] or [].",
        )
    if not enc.recency_prior >= 0:
        bad(
            "model.encoder.recency_prior must be >= 0.",
            "e.g. 2.0 (slots from a mean to the latest events) or 0 (none).",
        )
