"""Test doubles and helpers for the search tests (imported via ``tests/search/conftest.py``).

- :class:`FakeEngine`: an :class:`~spnas.engines.Engine` that "trains" by building the
  real detector-shaped backbone (an :class:`~spnas.modeling.SPNet` under
  ``backbone.bottom_up.``), loading the trial's initial weights through
  :meth:`Engine.initialize` (so weight inheritance along seed → serial → reignite → parallel is
  exercised for real), sleeping briefly, and saving the state dict. Its AP is a deterministic
  function of the architecture (:func:`fake_ap`), so some candidates improve and some do not.
- :func:`config_dict` / :func:`make_config`: a tiny study (``BB(11,d1,d1,d1)`` at width 8).
- :func:`write_seed_weights`: a random ResNet-18 in torchvision's key layout at width 8 (the
  ``model.pretrained`` file; a real ``torchvision.models.resnet18()`` has width 64, eight times
  the channels, which would make every trial's weights 50 MB).
- :func:`seed_decision`, :func:`reignite_decision`, :func:`pseed_decision`,
  :func:`parallel_decision`: the decisions the state-machine tests build histories from.
- :func:`frozen`: synthetic :class:`~optuna.trial.FrozenTrial` objects for the state machine.
- :func:`worker_main`: the body of one worker process in the concurrency tests.
"""

from __future__ import annotations

import datetime
import errno
import faulthandler
import hashlib
import logging
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from spnas.arch import ParallelCode, SerialCode
from spnas.engines import (
    DataSpec,
    Engine,
    ExportedDetector,
    InitWeights,
    ModelSpec,
    Reporter,
    Schedule,
    TrialResult,
    save_state_dict,
)
from spnas.search import Decision, SearchConfig

SEED_ARCH = "BB(11,d1,d1,d1)"
WIDTH = 8
#: Prefix of the backbone in the fake detector's state dict (detectron2's naming).
PREFIX = "backbone.bottom_up."


# --------------------------------------------------------------------------- AP function
def _unit(*parts: Any) -> float:
    """A deterministic pseudo-random number in [0, 1) from ``parts``."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fake_ap(kind: str, arch: Any, parallel: Any = None) -> float:
    """The AP the fake engine reports.

    Serial networks score 20–30 by a hash of their code, so a mutation improves on its parent
    about as often as chance says; a reignition adds 3 to its network's serial score (it is
    always an improvement, as in the paper); SPNets score 30–40 by a hash of both codes.
    Controls and verification trials score as their network does.
    """
    if kind in ("parallel_seed", "parallel", "final") or parallel is not None:
        return 30.0 + 10.0 * _unit("parallel", arch, parallel)
    value = 20.0 + 10.0 * _unit("serial", arch)
    return value + 3.0 if kind == "reignite" else value


def fake_objective(trial: optuna.Trial) -> float:
    """An objective for a plain Optuna study with SPNASSampler: :func:`fake_ap` of the trial's
    decision; trials with nothing to train (``idle``, ``exhausted``) are pruned."""
    from spnas.search import get_decision

    decision = get_decision(trial)
    if decision.kind in ("idle", "exhausted"):
        raise optuna.TrialPruned(f"nothing to train: {decision.kind}")
    return fake_ap(decision.kind, decision.arch, decision.parallel)


def infer_kind(spec: ModelSpec, init: InitWeights | None) -> str:
    """The trial kind as the engine can see it (it is not told)."""
    name = init.path.name if init is not None else ""
    if name == "seed_backbone.pth":
        return "seed"
    if name == "reignited.pth":
        return "reignite"
    if name == "pretrained_backbone.pth":
        return "verify"
    assert init is not None
    if init.parent_arch == spec.arch and init.parent_parallel == spec.parallel and not init.ops:
        return "control"
    if spec.parallel is None:
        return "serial"
    return "parallel_seed" if spec.parallel.total == 0 else "parallel"


# --------------------------------------------------------------------------- the engine
class _Backbone(nn.Module):
    def __init__(self, bottom_up: nn.Module, channels: int) -> None:
        super().__init__()
        self.bottom_up = bottom_up
        self.fpn_lateral = nn.Conv2d(channels, 8, 1)


class FakeDetector(nn.Module):
    """A detector-shaped module: ``backbone.bottom_up`` is the SPNet; a tiny head follows."""

    def __init__(self, spec: ModelSpec) -> None:
        from spnas.modeling import SPNet

        super().__init__()
        net = SPNet(
            spec.arch,
            spec.parallel,
            base_width=spec.base_width,
            stem=spec.stem,
            norm=spec.norm,
            xb_groups=spec.xb_groups,
        )
        self.backbone = _Backbone(net, spec.arch.stage_channels(spec.base_width)[-1])
        self.head = nn.Linear(8, spec.num_classes + 1)


class FakeEngine(Engine):
    """Fast stand-in for a detection engine (see the module docstring).

    Args:
        sleep: seconds each ``train_eval`` pretends to train.
        hang_dir: a directory of marker files named after trial kinds (``serial``, ``seed`` …).
            The first ``train_eval`` of such a kind claims the marker (an atomic rename), writes
            ``<kind>.pid`` (``"<pid> <trial dir>"``) and sleeps ``hang_seconds``, so a test can
            kill the process in the middle of that trial.
        hang_seconds: how long a claimed trial sleeps.
        full_disk_calls: the first so many ``train_eval`` calls fail as writing their weights
            to a full disk would (``OSError`` ``ENOSPC``).
        noise: the AP of a training seed other than 0 moves by up to ``± noise / 2`` (a hash
            of the seed): what a control's noise repeats measure.
    """

    name = "fake"
    show_progress = False

    def __init__(
        self,
        sleep: float = 0.2,
        hang_dir: str | None = None,
        hang_seconds: float = 300.0,
        full_disk_calls: int = 0,
        noise: float = 0.0,
    ) -> None:
        self.sleep = sleep
        self.noise = noise
        self.hang_dir = None if hang_dir is None else Path(hang_dir)
        self.hang_seconds = hang_seconds
        self.full_disk_calls = full_disk_calls
        self.calls: list[tuple[str, str, str | None]] = []

    def build_model(self, spec: ModelSpec, schedule: Schedule | None = None) -> nn.Module:
        return FakeDetector(spec)

    def evaluate(
        self,
        spec: ModelSpec,
        weights: InitWeights | None,
        schedule: Schedule,
        data: DataSpec,
        out_dir: str | Path = "output",
    ) -> dict[str, float]:
        raise NotImplementedError("FakeEngine only trains")

    def export(
        self, spec: ModelSpec, weights: Path, schedule: Schedule, data: DataSpec, out_dir: Path
    ) -> ExportedDetector:
        raise NotImplementedError("FakeEngine only trains")

    def _maybe_hang(self, kind: str, out_dir: Path) -> None:
        if self.hang_dir is None:
            return
        marker = self.hang_dir / kind
        claimed = self.hang_dir / f"{kind}.claimed"
        try:
            os.rename(marker, claimed)
        except FileNotFoundError:
            return
        pid_file = self.hang_dir / f"{kind}.pid"
        tmp = pid_file.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()} {out_dir}")
        tmp.replace(pid_file)
        time.sleep(self.hang_seconds)

    def train_eval(
        self,
        spec: ModelSpec,
        init_weights: InitWeights | None,
        schedule: Schedule,
        data: DataSpec,
        reporter: Reporter | None = None,
        out_dir: str | Path = "output",
        *,
        checkpoint_dir: str | Path | None = None,
    ) -> TrialResult:
        started = time.perf_counter()
        out_dir = Path(out_dir)
        kind = infer_kind(spec, init_weights)
        parallel = None if spec.parallel is None else str(spec.parallel)
        self.calls.append((kind, str(spec.arch), parallel))
        self._maybe_hang(kind, out_dir)
        if len(self.calls) <= self.full_disk_calls:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / "model.pth"))
        model = self.build_model(spec)
        inherited = self.initialize(model, init_weights)
        time.sleep(self.sleep)
        ap = fake_ap(kind, spec.arch, spec.parallel)
        if schedule.seed:
            ap += self.noise * (_unit("seed", schedule.seed) - 0.5)
        if reporter is not None:
            reporter.progress(1, 1, 1.0)
            reporter.evaluation(1, {"AP": ap})
        weights = save_state_dict(model, out_dir / "model_final.pth")
        params = sum(p.numel() for p in model.parameters())
        return TrialResult(
            metrics={"AP": ap, "AP50": ap + 20.0, "AP75": ap - 5.0, "LAMR": 1.0 - ap / 100.0},
            weights=weights,
            gmacs=0.01 * (1 + (spec.parallel.total if spec.parallel else 0)),
            params_m=params / 1e6,
            train_seconds=time.perf_counter() - started,
            eval_seconds=0.0,
            images_per_second=0.0,
            iterations=1,
            inherited_fraction=inherited,
        )


# --------------------------------------------------------------------------- study config
def config_dict(
    root: str | Path,
    name: str = "test",
    assets: str | Path | None = None,
    **sections: dict[str, Any],
) -> dict:
    """A tiny study: width-8 ResNet-18 seed, n_stuck 2, one reignition, fast waits.

    Storage, artifacts and workdir go under ``root``; the data set (``data/``) and the seed
    weights (``seed_resnet18.pth``) are read from ``assets`` (default ``root``).
    ``sections`` update the sections of the same name (``serial={"n_stuck": 3}``).
    """
    root = Path(root)
    assets = Path(assets) if assets is not None else root
    values: dict[str, Any] = {
        "study": {
            "name": name,
            "storage": f"sqlite:///{root / 'study.db'}",
            "artifacts": str(root / "artifacts"),
            "workdir": str(root / "work"),
        },
        "engine": {"name": "torchvision", "show_progress": False},
        "data": {"dir": str(assets / "data"), "metric": "AP"},
        "model": {
            "seed_arch": SEED_ARCH,
            "width": WIDTH,
            "fpn_channels": 8,
            "anchor_size": 8,
            "pretrained": str(assets / "seed_resnet18.pth"),
        },
        "space": {
            "min_blocks": 8,
            "max_blocks": 14,
            "min_stages": 4,
            "max_stages": 5,
            "max_subnets": 2,
        },
        "serial": {"n_mutations": 2, "n_stuck": 2, "n_rounds": 1},
        "parallel": {"n_stuck": 2, "budget_ratio": 2.5},
        "reignite": {"epochs": 1, "image_size": 16, "batch_size": 16, "lr": 0.01},
        "schedule": {
            "iters": 1,
            "ims_per_batch": 2,
            "min_size": 64,
            "max_size": 64,
            "num_workers": 0,
            "device": "cpu",
        },
        "search": {"seed": 0, "keep_top_k": 2, "wait_seconds": 0.05},
    }
    for section, update in sections.items():
        values.setdefault(section, {}).update(update)
    return values


def make_config(
    root: str | Path,
    name: str = "test",
    assets: str | Path | None = None,
    **sections: dict[str, Any],
) -> SearchConfig:
    return SearchConfig.from_dict(config_dict(root, name, assets, **sections))


# --------------------------------------------------------------------------- seed weights
_TO_TORCHVISION = (
    (re.compile(r"^stem\.conv1\."), "conv1."),
    (re.compile(r"^stem\.norm1\."), "bn1."),
    (re.compile(r"^res(\d+)\.(\d+)\.shortcut\.conv\."), "layer{s}.{j}.downsample.0."),
    (re.compile(r"^res(\d+)\.(\d+)\.shortcut\.norm\."), "layer{s}.{j}.downsample.1."),
    (re.compile(r"^res(\d+)\.(\d+)\.conv(\d)\."), "layer{s}.{j}.conv{m}."),
    (re.compile(r"^res(\d+)\.(\d+)\.norm(\d)\."), "layer{s}.{j}.bn{m}."),
)


def torchvision_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A SerialNet state dict renamed to torchvision's ResNet keys (plus a random ``fc``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, template in _TO_TORCHVISION:
            match = pattern.match(key)
            if match:
                groups = match.groups()
                values = {"s": int(groups[0]) - 1, "j": groups[1]} if groups else {}
                if len(groups) == 3:
                    values["m"] = groups[2]
                out[template.format(**values) + key[match.end() :]] = value
                break
        else:
            raise KeyError(key)
    channels = next(v for k, v in reversed(out.items()) if k.endswith("weight")).shape[0]
    out["fc.weight"] = torch.randn(10, channels)
    out["fc.bias"] = torch.zeros(10)
    return out


def write_seed_weights(path: str | Path, width: int = WIDTH, seed: int = 0) -> Path:
    """A random ResNet-18 (``BB(11,d1,d1,d1)``) in torchvision's layout at ``width``."""
    from spnas.modeling import SerialNet

    torch.manual_seed(seed)
    net = SerialNet(SEED_ARCH, base_width=width)
    path = Path(path)
    torch.save(torchvision_layout(net.state_dict()), path)
    return path


# --------------------------------------------------------------------------- decisions
#: The parallel code of an SPNet with no subnets (4 stages).
ZEROS = "(0,0,0,0)"


def write_decision(storage: Any, trial_id: int, decision: Decision) -> None:
    """Write ``decision`` on the trial with storage id ``trial_id`` as the sampler does
    (``spnas:kind`` last: the trial counts as decided once it is there)."""
    for key, value in decision.to_attrs().items():
        storage.set_trial_system_attr(trial_id, key, value)


def seed_decision() -> Decision:
    """The seed trial's decision (``SEED_ARCH``)."""
    return Decision("seed", arch=SerialCode.parse(SEED_ARCH), round=0)


def reignite_decision(arch_text: str, parent: int, round_: int) -> Decision:
    return Decision("reignite", arch=SerialCode.parse(arch_text), parent=parent, round=round_)


def pseed_decision(arch_text: str, parent: int) -> Decision:
    """The parallel seed: ``arch_text`` with no subnets."""
    return Decision(
        "parallel_seed",
        arch=SerialCode.parse(arch_text),
        parallel=ParallelCode.parse(ZEROS),
        parent=parent,
    )


def parallel_decision(arch_text: str, code: str, parent: int) -> Decision:
    """A parallel candidate (round 2: the last round of a one-reignition study)."""
    return Decision(
        "parallel",
        arch=SerialCode.parse(arch_text),
        parallel=ParallelCode.parse(code),
        parent=parent,
        round=2,
    )


# --------------------------------------------------------------------------- frozen trials
_T0 = datetime.datetime(2024, 1, 1)


def frozen(
    number: int,
    decision: Decision | None,
    state: TrialState = TrialState.COMPLETE,
    value: float | None = None,
    finished: float | None = None,
    retry_of: list[int] | None = None,
) -> FrozenTrial:
    """A synthetic trial; ``finished`` is its finish time in seconds (default: its number)."""
    system_attrs: dict[str, Any] = {} if decision is None else decision.to_attrs()
    if retry_of:
        system_attrs["retry_history"] = list(retry_of)
        system_attrs["failed_trial"] = retry_of[0]
    done = state.is_finished()
    if state == TrialState.COMPLETE and value is None:
        raise ValueError("a COMPLETE trial needs a value")
    return FrozenTrial(
        number=number,
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        datetime_start=_T0 + datetime.timedelta(seconds=number),
        datetime_complete=(
            _T0 + datetime.timedelta(seconds=number if finished is None else finished)
            if done
            else None
        ),
        params={},
        distributions={},
        user_attrs={},
        system_attrs=system_attrs,
        intermediate_values={},
        trial_id=number,
    )


# --------------------------------------------------------------------------- worker processes
#: The worker's log, open for faulthandler's stack dumps for as long as the process lives.
_STACK_DUMPS: list[Any] = []


def worker_main(
    name: str,
    url: str,
    log_file: str,
    engine_kwargs: dict[str, Any],
    storage_options: dict[str, Any] | None = None,
) -> None:
    """One worker process: one torch thread, a FakeEngine objective, ``run_worker``.

    Exits 0 when the search is done, 3 when the worker stopped otherwise.
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    logging.basicConfig(
        filename=log_file,
        level=logging.INFO,
        format=f"%(asctime)s [{os.getpid()}] %(name)s %(levelname)s: %(message)s",
        force=True,
    )
    logging.getLogger("optuna").setLevel(logging.INFO)
    # A test that times out sends SIGUSR1 (Workers.log_tails): every thread's stack to the log.
    _STACK_DUMPS.append(open(log_file, "a"))  # noqa: SIM115 - open as long as the process
    faulthandler.register(signal.SIGUSR1, file=_STACK_DUMPS[-1], all_threads=True)
    from spnas.search import Objective, join_search_study, run_worker

    kwargs: dict[str, Any] = {}
    if storage_options:
        kwargs["storage_options"] = storage_options
    _, config = join_search_study(name, url, **kwargs)  # as `spnas worker` does
    objective = Objective(config, engine=FakeEngine(**engine_kwargs))
    state = run_worker(name, url, objective=objective, **kwargs)
    logging.getLogger(__name__).info("worker done: %s", state.phase)
    logging.shutdown()
    os._exit(0 if state.phase == "done" else 3)
