"""Study configuration: the study YAML, validated, and stored in the study's user attributes.

docs/study-yaml.md documents every key with its default and its check
(tests/search/test_search_yaml_doc.py compares it with the dataclasses below). A study YAML
has these sections (every key optional but ``study.name``; unknown keys and
values of the wrong type are errors naming the key)::

    study:     name, storage, artifacts, workdir
    engine:    name (detectron2 | torchvision), config (detectron2 YAML), opts, show_progress
    data:      dir, metric (AP | AP50 | LAMR …), lamr_category, synthetic {train, val, size, …}
    model:     seed_arch, width, stem, norm, xb_groups, fpn_channels, anchor_size, pretrained
    space:     min_blocks, max_blocks, min_stages, max_stages, min_blocks_per_stage,
               max_subnets, max_doublings, block_types
    serial:    n_mutations, n_stuck, n_rounds, op_weights, max_trials (per round)
    parallel:  n_stuck, budget_gmacs, budget_ratio, max_tries, max_trials
    reignite:  epochs, image_size, lr, batch_size, imagefolder, rescale_weights
    schedule:  fields of spnas.engines.Schedule (the fast scheme of every trial)
    verify:    enabled, repeats, schedule (overrides of ``schedule`` for retraining)
    final:     enabled, schedule
    search:    seed, comparison (equal_training | greedy), noise_repeats,
               acceptance (noise_aware | greedy), accept_z, keep_top_k, wait_seconds,
               max_barrier_attempts, barrier_backoff_seconds,
               disk_full_wait_seconds, beat_seconds, beat_grace_seconds

Every key's value is bounded (:func:`check_size`): at most :data:`MAX_VALUES_PER_KEY` values,
counted with every use of a YAML alias, so an alias bomb is refused before anything copies it.

Relative paths in a study YAML (and in ``--set`` overrides) are resolved against the YAML's
folder, wherever ``spnas search`` runs; the default ``study.workdir`` (``runs/<name>``) is in the
current directory. Paths are stored absolute, so workers on other nodes (``spnas worker``, no
YAML) see the same files.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from spnas.arch import SearchSpace, SerialCode
from spnas.engines import METRIC_DIRECTIONS, ModelSpec, Schedule, engine_names
from spnas.exceptions import ArchError, ConfigError

CONFIG_ATTR = "spnas:config"
#: The study's data set as validated when it was created: the fingerprint of its annotation
#: files and its class count (:func:`spnas.search.check_inputs`), which workers check.
DATA_ATTR = "spnas:data"
#: ``search.comparison``: how candidates are judged (docs/design.md, "Equal training").
COMPARISONS: tuple[str, ...] = ("equal_training", "greedy")
#: ``search.acceptance``: when a candidate replaces the round's best (docs/design.md §4.1).
ACCEPTANCES: tuple[str, ...] = ("noise_aware", "greedy")
#: The most values one key of a study config may hold, counted expanded: a YAML alias counts
#: every time it is used, so a "billion laughs" document (9 levels of 9 aliases: 387 M values
#: from 1 KB) is refused before anything copies it. Real configs hold a few dozen values a key.
MAX_VALUES_PER_KEY = 10_000
#: The deepest nesting of lists and mappings under one key of a study config.
MAX_DEPTH = 16
#: ``serial.n_rounds``: each round ends with a reignition, a classification pretraining (on
#: ImageNet in real use, GPU-days each); the shipped studies use 1-2 rounds. 100 leaves room
#: for any real search and refuses a typo (1000000) that would never end the serial phase.
MAX_ROUNDS = 100
#: ``search.noise_repeats``: each is a full search trial per round; more than 10 would spend a
#: round's budget on measuring noise that 3–5 repeats already estimate to ±30 %.
MAX_NOISE_REPEATS = 10
#: A detectron2 config key in ``engine.opts``: dotted upper-case names, e.g. ``MODEL.FPN.NORM``.
_OPTS_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
#: How deep an ``engine.opts`` value may nest lists (``MODEL.ANCHOR_GENERATOR.SIZES`` is 2).
_OPTS_VALUE_DEPTH = 3


def check_size(value: Any, where: str) -> None:
    """Refuse a value holding more than :data:`MAX_VALUES_PER_KEY` values, counted expanded
    (every use of a YAML alias counts, so shared references cannot hide a blow-up), or nested
    deeper than :data:`MAX_DEPTH`. Stops counting at the limit: fast whatever the expansion.

    Raises:
        ConfigError: naming ``where`` (the key) and the limit.
    """
    count = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES_PER_KEY:
            raise ConfigError(
                f"'{where}' holds more than {MAX_VALUES_PER_KEY} values (each use of a YAML "
                "alias counts): expected a small value; is it an alias bomb?"
            )
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"'{where}' nests lists or mappings deeper than {MAX_DEPTH} levels: expected "
                "a small value"
            )
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
            count += len(node)  # the keys
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)


def _check_config_size(values: Mapping[str, Any]) -> None:
    """:func:`check_size` for every key of every section of a raw study config mapping."""
    for section, body in values.items():
        if isinstance(body, Mapping):
            for key, value in body.items():
                check_size(value, f"{section}.{key}")
        else:
            check_size(body, str(section))


def _check_opts(opts: tuple[Any, ...]) -> None:
    """``engine.opts`` is ``[KEY, VALUE, …]``: dotted config keys, each followed by a number,
    string, boolean, null or a (nested) list of them."""

    def scalar_or_list(value: Any, depth: int) -> bool:
        if isinstance(value, (list, tuple)):
            return depth < _OPTS_VALUE_DEPTH and all(scalar_or_list(v, depth + 1) for v in value)
        return value is None or isinstance(value, (str, int, float, bool))

    if len(opts) % 2:
        raise ConfigError(
            f"opts: {len(opts)} items, expected KEY, VALUE pairs (an even number), e.g. "
            "[MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE, 128]"
        )
    for i in range(0, len(opts), 2):
        key, value = opts[i], opts[i + 1]
        if not isinstance(key, str) or not _OPTS_KEY.fullmatch(key):
            raise ConfigError(
                f"opts: item {i} is {key!r}, expected a dotted config key such as "
                "'MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE'"
            )
        if not scalar_or_list(value, 0):
            raise ConfigError(
                f"opts: the value of {key!r} (item {i + 1}) is {value!r}, expected a number, "
                f"string, true/false, null or a list of them nested at most "
                f"{_OPTS_VALUE_DEPTH} deep"
            )


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a simple annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            if option is type(None) and value is None:
                return None
            if option is type(None):
                continue
            try:
                return _check_type(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        expected = " or ".join(
            "null" if a is type(None) else getattr(a, "__name__", str(a))
            for a in typing.get_args(annotation)
        )
        raise ConfigError(f"{where} is {value!r}, expected {expected}")
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} is {value!r}, expected a mapping")
        return dict(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} is {value!r}, expected a list")
        return tuple(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} is {value!r}, expected a number")
        return float(value)
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where} is {value!r}, expected an integer")
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} is {value!r}, expected true or false")
    if annotation is str and not isinstance(value, str):
        raise ConfigError(f"{where} is {value!r}, expected a string")
    return value


def _from_mapping(cls: type, values: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"'{where}' is {values!r}, expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"unknown key '{where}.{key}', expected one of {', '.join(sorted(fields))}"
            )
        kwargs[key] = _check_type(value, hints[key], f"'{where}.{key}'")
    try:
        return cls(**kwargs)
    except (ConfigError, ArchError) as exc:
        text = str(exc)
        if text.startswith(f"'{where}."):  # a nested section named its full path already
            raise ConfigError(text) from exc
        # A section's own check names its key first ("seed_arch: …"): make it a full path.
        field = text.split(":", 1)[0]
        if field in fields:
            raise ConfigError(f"'{where}.{field}':{text.split(':', 1)[1]}") from exc
        raise ConfigError(f"'{where}': {text}") from exc


@dataclasses.dataclass(frozen=True)
class StudySection:
    name: str = ""
    storage: str | None = None
    artifacts: str | None = None
    workdir: str | None = None


@dataclasses.dataclass(frozen=True)
class EngineSection:
    name: str = "detectron2"
    config: str | None = None
    opts: tuple[Any, ...] = ()
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.name not in engine_names():
            raise ConfigError(f"engine {self.name!r}, expected one of {', '.join(engine_names())}")
        _check_opts(self.opts)


@dataclasses.dataclass(frozen=True)
class SyntheticSection:
    train: int = 200
    val: int = 50
    size: int = 128
    classes: int = 4
    max_objects: int | None = None
    seed: int = 0
    profile: str = "shapes"

    def __post_init__(self) -> None:
        from spnas.data.synthetic import PROFILES

        if self.profile not in PROFILES:
            raise ConfigError(
                f"profile: {self.profile!r} is not a synthetic profile, expected one of "
                f"{', '.join(PROFILES)}"
            )


@dataclasses.dataclass(frozen=True)
class DataSection:
    dir: str = ""
    metric: str = "AP"
    lamr_category: int | None = None
    synthetic: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRIC_DIRECTIONS:
            raise ConfigError(
                f"metric {self.metric!r}, expected one of {', '.join(METRIC_DIRECTIONS)}"
            )
        self.synthetic_settings  # noqa: B018 - validates the mapping now, not at data time

    @property
    def synthetic_settings(self) -> SyntheticSection | None:
        if self.synthetic is None:
            return None
        return _from_mapping(SyntheticSection, self.synthetic, "data.synthetic")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    seed_arch: str = "BNB(111,d111,d11111,d11)"
    width: int = 64
    stem: str = "resnet"
    norm: str = "BN"
    xb_groups: int = 32
    fpn_channels: int = 256
    anchor_size: int = 32
    pretrained: str | None = None

    def __post_init__(self) -> None:
        try:
            SerialCode.parse(self.seed_arch)
        except ArchError as exc:
            raise ConfigError(f"seed_arch: {exc}") from None


@dataclasses.dataclass(frozen=True)
class SerialSection:
    n_mutations: int = 3
    n_stuck: int = 5
    n_rounds: int = 1
    op_weights: dict[str, float] | None = None
    max_trials: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_mutations", "n_stuck"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serial.{name}={getattr(self, name)}: expected ≥ 1")
        if not 0 <= self.n_rounds <= MAX_ROUNDS:
            raise ConfigError(
                f"'serial.n_rounds' is {self.n_rounds}, expected an integer from 0 to "
                f"{MAX_ROUNDS} (each round ends with a reignition: a pretraining)"
            )


@dataclasses.dataclass(frozen=True)
class ParallelSection:
    n_stuck: int = 5
    budget_gmacs: float | None = None
    budget_ratio: float | None = 2.0
    max_tries: int = 1000
    max_trials: int | None = None

    def __post_init__(self) -> None:
        if self.n_stuck < 1:
            raise ConfigError(f"parallel.n_stuck={self.n_stuck}: expected ≥ 1")


@dataclasses.dataclass(frozen=True)
class ReigniteSection:
    epochs: int = 10
    image_size: int = 64
    #: ``None``: 0.1 × batch_size / 256 (:func:`spnas.pretrain.linear_scaled_lr`).
    lr: float | None = None
    batch_size: int = 64
    imagefolder: str | None = None
    rescale_weights: bool = True


@dataclasses.dataclass(frozen=True)
class VerifySection:
    """Verification (paper Fig. 4a): the seed, every round's best and the best SPNet are
    retrained from scratch, ``repeats`` seeds each, with ``schedule`` (keys overriding the
    search's ``schedule``) once the parallel phase ended."""

    enabled: bool = True
    repeats: int = 3
    schedule: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ConfigError(f"verify.repeats={self.repeats}: expected ≥ 1")


@dataclasses.dataclass(frozen=True)
class FinalSection:
    enabled: bool = False
    schedule: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class SearchSection:
    seed: int = 0
    comparison: str = "equal_training"
    #: With equal training, how many seeds each round's control trains (the same network and
    #: weights, training seeds ``schedule.seed + k``): their spread is the round's σ_trial,
    #: the noise of one search trial. 1: no noise measured.
    noise_repeats: int = 2
    #: ``noise_aware``: a candidate must beat the round's best by more than ``accept_z`` ×
    #: σ_trial, and again as the mean of a second evaluation with a fresh seed; ``greedy``:
    #: the paper's rule, any better value.
    acceptance: str = "noise_aware"
    accept_z: float = 1.0
    keep_top_k: int = 3
    wait_seconds: float = 2.0
    max_barrier_attempts: int = 3
    #: The wait after a barrier's first failure; it doubles after each further one.
    barrier_backoff_seconds: float = 10.0
    #: How long a worker waits for a full disk to have space again before it stops
    #: (spnas.search._disk); its trial is queued with its decision meanwhile.
    disk_full_wait_seconds: float = 1800.0
    #: On storages without Optuna heartbeats (the gRPC proxy, a journal file): how often a
    #: running trial beats, and how long its beat may stand still before waiting workers fail
    #: and retry it (spnas.search._liveness). RDB storages use their own heartbeats.
    beat_seconds: float = 60.0
    beat_grace_seconds: float = 600.0

    def __post_init__(self) -> None:
        if not self.beat_seconds > 0:
            raise ConfigError(f"search.beat_seconds={self.beat_seconds!r}: expected seconds > 0")
        if not self.beat_grace_seconds >= 2 * self.beat_seconds:
            raise ConfigError(
                f"search.beat_grace_seconds={self.beat_grace_seconds!r}: expected at least "
                f"twice search.beat_seconds ({2 * self.beat_seconds!r})"
            )
        if not self.disk_full_wait_seconds >= 0:
            raise ConfigError(
                f"search.disk_full_wait_seconds={self.disk_full_wait_seconds!r}: expected "
                "seconds >= 0"
            )
        if self.comparison not in COMPARISONS:
            raise ConfigError(
                f"search.comparison={self.comparison!r}: expected one of {', '.join(COMPARISONS)}"
            )
        if self.acceptance not in ACCEPTANCES:
            raise ConfigError(
                f"search.acceptance={self.acceptance!r}: expected one of {', '.join(ACCEPTANCES)}"
            )
        if not 0 <= self.accept_z < float("inf"):
            raise ConfigError(
                f"search.accept_z={self.accept_z!r}: expected a number ≥ 0 (how many σ_trial a "
                "candidate must beat the round's best by)"
            )
        if not 1 <= self.noise_repeats <= MAX_NOISE_REPEATS:
            raise ConfigError(
                f"search.noise_repeats={self.noise_repeats!r}: expected an integer from 1 (no "
                f"noise measured) to {MAX_NOISE_REPEATS} (control trials per round)"
            )


_SECTIONS: dict[str, type] = {
    "study": StudySection,
    "engine": EngineSection,
    "data": DataSection,
    "model": ModelSection,
    "serial": SerialSection,
    "parallel": ParallelSection,
    "reignite": ReigniteSection,
    "verify": VerifySection,
    "final": FinalSection,
    "search": SearchSection,
}


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """A validated study configuration (see the module docstring for the YAML layout)."""

    study: StudySection
    engine: EngineSection
    data: DataSection
    model: ModelSection
    space: SearchSpace
    serial: SerialSection
    parallel: ParallelSection
    reignite: ReigniteSection
    schedule: Schedule
    verify: VerifySection
    final: FinalSection
    search: SearchSection

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> SearchConfig:
        """Validate a parsed YAML mapping.

        Raises:
            ConfigError: naming the unknown key or the key with a wrong value.
        """
        values = dict(values or {})
        known = {*_SECTIONS, "space", "schedule"}
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"unknown key {key!r} in study config, expected one of "
                    f"{', '.join(sorted(known))}"
                )
        # Before anything copies or prints a value (dataclasses.asdict, repr in a message).
        _check_config_size(values)
        sections = {
            name: _from_mapping(section, values.get(name), name)
            for name, section in _SECTIONS.items()
        }
        space_values = values.get("space") or {}
        if not isinstance(space_values, Mapping):
            raise ConfigError(f"'space' is {space_values!r}, expected a mapping")
        try:
            space = SearchSpace.from_dict(space_values)
        except (TypeError, ArchError) as exc:
            raise ConfigError(f"'space': {exc}") from exc
        schedule = _from_mapping(Schedule, values.get("schedule"), "schedule")
        config = cls(space=space, schedule=schedule, **sections)
        if not config.study.name:
            raise ConfigError("missing key 'study.name': every study needs a name")
        check_study_name(config.study.name)
        if config.final.schedule is not None:
            _from_mapping(Schedule, config.final.schedule, "final.schedule")
        if config.verify.schedule is not None:
            _from_mapping(Schedule, config.verify.schedule, "verify.schedule")
        space.validate(config.seed_arch)
        from spnas.search._checks import check_values

        check_values(config)
        return config

    @classmethod
    def from_yaml(
        cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()
    ) -> SearchConfig:
        """Read a study YAML, apply ``key.sub=value`` overrides, resolve relative paths."""
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"study file {str(path)!r} does not exist") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            raise ConfigError(f"study file {str(path)!r}: malformed YAML{where}: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"study file {str(path)!r}: expected a mapping of sections")
        for item in overrides:
            apply_override(values, item)
        return cls.from_dict(values).resolved(path.resolve().parent, defaults=Path.cwd())

    def resolved(self, base: Path, defaults: Path | None = None) -> SearchConfig:
        """Paths made absolute against ``base``; default storage, artifacts and workdir (under
        ``defaults``, by default ``base``)."""

        def absolute(path: str | None) -> str | None:
            if path is None or "://" in path:
                return path
            return str((base / path).resolve())

        default_workdir = (defaults or base) / "runs" / self.study.name
        workdir = absolute(self.study.workdir) or str(default_workdir.resolve())
        storage = self.study.storage or f"sqlite:///{Path(workdir) / 'spnas.db'}"
        if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
            storage = f"sqlite:///{absolute(storage.removeprefix('sqlite:///'))}"
        study = dataclasses.replace(
            self.study,
            storage=storage,
            artifacts=absolute(self.study.artifacts) or str(Path(workdir) / "artifacts"),
            workdir=workdir,
        )
        data = dataclasses.replace(self.data, dir=absolute(self.data.dir) or "")
        engine = dataclasses.replace(self.engine, config=absolute(self.engine.config))
        model = dataclasses.replace(self.model, pretrained=absolute(self.model.pretrained))
        reignite = dataclasses.replace(
            self.reignite, imagefolder=absolute(self.reignite.imagefolder)
        )
        return dataclasses.replace(
            self, study=study, data=data, engine=engine, model=model, reignite=reignite
        )

    # ----------------------------------------------------------------- derived
    @property
    def seed_arch(self) -> SerialCode:
        return SerialCode.parse(self.model.seed_arch)

    @property
    def direction(self) -> str:
        return METRIC_DIRECTIONS[self.data.metric]

    @property
    def final_schedule(self) -> Schedule:
        values = {**self.schedule.to_dict(), "name": "full", "iters": None, "epochs": 24.0}
        values.update(self.final.schedule or {})
        return Schedule.from_dict(values)

    @property
    def verify_schedule(self) -> Schedule:
        """The schedule of verification trials: ``schedule`` with ``verify.schedule``'s keys."""
        return Schedule.from_dict({**self.schedule.to_dict(), **(self.verify.schedule or {})})

    def model_spec(self, arch: Any, parallel: Any, num_classes: int) -> ModelSpec:
        m = self.model
        return ModelSpec(
            arch=arch,
            parallel=parallel,
            num_classes=num_classes,
            base_width=m.width,
            stem=m.stem,
            norm=m.norm,
            xb_groups=m.xb_groups,
            fpn_channels=m.fpn_channels,
            anchor_size=m.anchor_size,
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that :meth:`from_dict` accepts (JSON-serialisable)."""
        values: dict[str, Any] = {
            name: _plain(dataclasses.asdict(getattr(self, name))) for name in _SECTIONS
        }
        values["space"] = self.space.to_dict()
        values["schedule"] = self.schedule.to_dict()
        return values


#: A study name is also a directory name (``runs/<name>``): one path component, no more.
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_study_name(name: str) -> None:
    """Refuse a study name that is not a plain directory name.

    The default workdir, database and artifacts live in ``runs/<study.name>``: a name with
    ``/``, ``..`` or a leading ``.`` (or an absolute path) would write outside ``runs/``.

    Raises:
        ConfigError: naming the key ``study.name`` and the characters allowed.
    """
    if not _STUDY_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"'study.name' is {name!r}: expected 1-128 letters, digits, '-', '_' and '.', "
            "starting with a letter or digit and without '..' (it names a directory)"
        )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def apply_override(values: dict[str, Any], item: str) -> None:
    """Apply ``"section.key=value"`` (value parsed as YAML) to a raw config mapping."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. serial.n_stuck=3")
    parts = key.strip().split(".")
    node = values
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
