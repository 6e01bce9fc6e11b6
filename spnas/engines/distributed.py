"""Data-parallel trials and distributed training: one process per device, rank 0 reports.

:func:`launch` starts ``main_func`` in ``num_processes`` processes per machine with
:func:`torch.multiprocessing.start_processes` (the launcher torch ships; detectron2 0.6's own
``detectron2.engine.launch`` asserts CUDA and NCCL, so it cannot run on the CPU). Each process
joins one process group — NCCL on GPUs, Gloo on the CPU — and, as detectron2's launcher does,
a group of the processes on its machine (``detectron2.utils.comm``'s local group, when
detectron2 is installed). Global rank 0's return value comes back to the caller, and so do
the messages it :func:`post`\\ s (the search's reporter lives in the calling process, where
its Optuna trial is); their standard output goes to standard error, leaving the caller's to
its results (``--json``). When any process fails, torch's launcher terminates the others and
:func:`launch` raises: a trial is never half-trained.

Under ``torchrun`` (``dist_url="env://"``), :func:`launch` starts nothing: torchrun started one
process per GPU and set :data:`TORCHRUN_VARIABLES` (read by :func:`torchrun_env`); this process
joins their group as one rank, with the same local group, and runs ``main_func`` itself.

:func:`data_parallel` wraps an engine's ``train_eval`` so that a schedule with
``gpus_per_trial`` > 1 runs it in that many processes; the engines then train with
``DistributedDataParallel`` (detectron2's ``DefaultTrainer`` does; the torchvision engine
with a ``DistributedSampler``). The batch follows detectron2's ``REFERENCE_WORLD_SIZE: 0``
rule: ``ims_per_batch`` is the *total* batch over all processes (each takes
``ims_per_batch / gpus_per_trial`` images) and ``base_lr`` is used as given, so a trial's
result does not depend on how many devices ran it. For the same reason batch norm is
synchronised on GPUs (:func:`synced_norm`): a ``BN`` network trains with ``SyncBN``,
whose statistics are those of the whole batch, not of each process's share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import logging
import os
import pickle
import queue as queue_module
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.multiprocessing.spawn import ProcessException

from spnas.device import check_one_gpu_each, resolve_device
from spnas.exceptions import ConfigError, SpnasError

if TYPE_CHECKING:
    from spnas.engines._types import (
        DataSpec,
        InitWeights,
        ModelSpec,
        Reporter,
        Schedule,
        TrialResult,
    )
    from spnas.engines.base import Engine

__all__ = [
    "DEFAULT_TIMEOUT",
    "TORCHRUN_VARIABLES",
    "DistributedError",
    "TorchrunEnv",
    "data_parallel",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "launch",
    "post",
    "torchrun_env",
    "unwrap",
]

_logger = logging.getLogger(__name__)

#: How long a collective may wait for the slowest process (detectron2's default): rank 0
#: evaluates alone in the torchvision engine while the others wait.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)

#: Seconds between two looks at the processes while waiting for them.
_POLL_S = 0.2

# Where :func:`post` sends messages: the launcher's queue in a launched process of global
# rank 0, the caller's handler when :func:`launch` ran ``main_func`` in its own process.
_queue: Any = None
_handler: Callable[[Any], None] | None = None


class DistributedError(SpnasError, RuntimeError):
    """A process of a data-parallel run failed (crashed, was killed, or raised)."""


#: The variables torchrun sets in each process it starts that :func:`torchrun_env` requires:
#: the rank layout, and where rank 0 listens (what ``init_method="env://"`` reads).
TORCHRUN_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)

# Any one of these marks torchrun's (or an equivalent launcher's) environment.
_RANK_VARIABLES = TORCHRUN_VARIABLES[:4]


@dataclasses.dataclass(frozen=True)
class TorchrunEnv:
    """This process's place in a run ``torchrun`` started: ``local_world_size`` processes on
    each of ``world_size / local_world_size`` machines, global ranks numbered machine by
    machine (torchrun's order with the same ``--nproc-per-node`` on every node)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def num_processes(self) -> int:
        """Processes on this machine (``--num-gpus``)."""
        return self.local_world_size

    @property
    def num_machines(self) -> int:
        return self.world_size // self.local_world_size

    @property
    def machine_rank(self) -> int:
        return self.rank // self.local_world_size


def torchrun_env(environ: Mapping[str, str] | None = None) -> TorchrunEnv | None:
    """The layout torchrun gave this process, or ``None`` outside torchrun.

    A process is under torchrun when any of ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
    ``LOCAL_WORLD_SIZE`` is set in ``environ`` (default: :data:`os.environ`); then all of
    :data:`TORCHRUN_VARIABLES` must be (``MASTER_ADDR`` and ``MASTER_PORT`` for ``env://``).

    Raises:
        ConfigError: naming a variable that is missing, not an integer, or out of range, or
            a layout :func:`launch` cannot form (different process counts per machine, or
            ranks not numbered machine by machine).
    """
    environ = os.environ if environ is None else environ
    if not any(name in environ for name in _RANK_VARIABLES):
        return None
    missing = [name for name in TORCHRUN_VARIABLES if not environ.get(name)]
    if missing:
        raise ConfigError(
            f"torchrun environment: {', '.join(missing)} not set (a process under torchrun "
            f"has all of {', '.join(TORCHRUN_VARIABLES)}; found "
            f"{', '.join(n for n in _RANK_VARIABLES if n in environ)})"
        )
    values: dict[str, int] = {}
    for name in _RANK_VARIABLES:
        try:
            values[name] = int(environ[name])
        except ValueError:
            raise ConfigError(
                f"torchrun environment: {name}={environ[name]!r}: expected an integer"
            ) from None
    env = TorchrunEnv(
        values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"]
    )
    layout = f"RANK={env.rank}, WORLD_SIZE={env.world_size}, LOCAL_RANK={env.local_rank}, "
    layout += f"LOCAL_WORLD_SIZE={env.local_world_size}"
    if not (0 <= env.rank < env.world_size and 0 <= env.local_rank < env.local_world_size):
        raise ConfigError(
            f"torchrun environment: {layout}: expected 0 <= RANK < WORLD_SIZE and "
            "0 <= LOCAL_RANK < LOCAL_WORLD_SIZE"
        )
    if env.world_size % env.local_world_size or env.rank % env.local_world_size != env.local_rank:
        raise ConfigError(
            f"torchrun environment: {layout}: expected the same --nproc-per-node on every node "
            "(WORLD_SIZE a multiple of LOCAL_WORLD_SIZE, RANK = node rank x LOCAL_WORLD_SIZE "
            "+ LOCAL_RANK)"
        )
    return env


def get_world_size() -> int:
    """Processes in the current process group (1 when there is none)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    """This process's global rank (0 when there is no process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Whether this process writes weights, metrics and reports: global rank 0."""
    return get_rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The module a ``DistributedDataParallel`` wraps (``model`` itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def post(message: Any) -> None:
    """Send ``message`` (picklable) from global rank 0 to :func:`launch`'s ``on_message``.

    Does nothing in other processes, or when the launcher was given no handler.
    """
    if _handler is not None:
        _handler(message)
    elif _queue is not None:
        _queue.put(("message", message))


def _check_layout(num_processes: int, num_machines: int, machine_rank: int) -> None:
    if num_processes < 1 or num_machines < 1:
        raise ConfigError(
            f"num_processes={num_processes}, num_machines={num_machines}: expected at least 1"
        )
    if not 0 <= machine_rank < num_machines:
        raise ConfigError(
            f"machine_rank={machine_rank}: expected 0 to {num_machines - 1} "
            f"(num_machines={num_machines})"
        )


def _wait(
    context: Any, messages: Any, on_message: Callable[[Any], None] | None, world_size: int
) -> Any:
    """Forward rank 0's messages until every process ended; rank 0's result."""
    outcome: dict[str, Any] = {"errors": []}
    try:
        while True:
            _drain(messages, outcome, on_message)
            if context.join(timeout=_POLL_S):
                break
    except ProcessException as exc:
        # torch's launcher has terminated the other processes.
        _drain(messages, outcome, None)
        raise _failure(exc, outcome["errors"], world_size) from None
    except BaseException:
        # on_message raised (a pruned trial) or the caller was interrupted: stop them all.
        _stop(context)
        raise
    _drain(messages, outcome, on_message)
    return outcome.get("result")


def launch(
    main_func: Callable[..., Any],
    num_processes: int,
    *,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: Sequence[Any] = (),
    backend: str | None = None,
    on_message: Callable[[Any], None] | None = None,
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> Any:
    """Run ``main_func(*args)`` in ``num_processes`` processes on each of ``num_machines``.

    Call it on every machine, with its ``machine_rank``, as detectron2's ``launch``. With one
    process in all, ``main_func`` runs here, in this process.

    With ``dist_url="env://"`` it starts nothing: call it in every process ``torchrun``
    started (``torchrun --nproc-per-node N --nnodes M ...``). This process joins their group
    as the rank :func:`torchrun_env` reads, ``torch.cuda.set_device(LOCAL_RANK)`` first on
    NCCL, creates the same local group as launched processes do, runs ``main_func`` here and
    destroys the group at the end. ``num_processes``, ``num_machines`` and ``machine_rank``
    must then be torchrun's (:attr:`TorchrunEnv.num_processes` and the others).

    Args:
        main_func: a picklable (module-level) function; it runs with the process group
            initialised.
        num_processes: processes on this machine (one per GPU).
        num_machines: machines taking part, each starting ``num_processes`` processes.
        machine_rank: this machine's rank, 0 to ``num_machines - 1``.
        dist_url: where the processes meet, e.g. ``tcp://10.0.0.1:29500``; ``"auto"``: a
            free port on this machine (one machine only); ``"env://"``: torchrun's
            ``MASTER_ADDR`` and ``MASTER_PORT``, this process being one rank.
        args: positional arguments of ``main_func`` (picklable, except under ``env://``).
        backend: ``"nccl"`` or ``"gloo"``; by default NCCL when CUDA is available, else Gloo.
        on_message: called here with every message global rank 0 :func:`post`\\ s; what it
            raises (e.g. :class:`optuna.TrialPruned`) stops the processes and propagates.
            Under ``env://`` it is called in global rank 0's process only.
        timeout: of the process group's collectives.

    Returns:
        ``main_func``'s return value in global rank 0 (``None`` on other machines, and in
        the other ranks under ``env://``).

    Raises:
        ConfigError: for a process count or machine rank out of range, ``dist_url="auto"``
            with several machines, NCCL with fewer GPUs than processes, or, under
            ``env://``, a torchrun environment that is missing, invalid, or at odds with
            ``num_processes``, ``num_machines`` or ``machine_rank``.
        DistributedError: when a process fails; the message names its rank and error. An
            :class:`~spnas.exceptions.SpnasError` a process raised (a diverged trial, bad
            input) is raised as itself. (Under ``env://``, ``main_func``'s exception
            propagates in its own process; torchrun stops the others.)
    """
    global _handler
    _check_layout(num_processes, num_machines, machine_rank)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if dist_url == "env://":
        return _launch_here(
            main_func,
            num_processes,
            num_machines,
            machine_rank,
            args,
            backend,
            on_message,
            timeout,
        )
    world_size = num_processes * num_machines
    if world_size == 1:
        _handler = on_message
        try:
            return main_func(*args)
        finally:
            _handler = None
    if dist_url == "auto":
        if num_machines > 1:
            raise ConfigError("dist_url 'auto' works on one machine; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    _check_gpus(backend, num_processes)
    messages = mp.get_context("spawn").SimpleQueue()
    # Each process takes its share of this one's CPU threads (data-parallel on the CPU).
    threads = max(1, torch.get_num_threads() // num_processes)
    context = mp.start_processes(
        _worker,
        args=(
            main_func,
            tuple(args),
            world_size,
            num_processes,
            machine_rank,
            dist_url,
            backend,
            timeout,
            messages,
            threads,
            os.getpid(),
            logging.getLogger().getEffectiveLevel(),
        ),
        nprocs=num_processes,
        join=False,
        start_method="spawn",
    )
    _logger.info(
        "started %d %s process(es) of %d (machine %d of %d) at %s",
        num_processes,
        backend,
        world_size,
        machine_rank,
        num_machines,
        dist_url,
    )
    return _wait(context, messages, on_message, world_size)


def _check_gpus(backend: str, num_processes: int) -> None:
    if backend == "nccl" and torch.cuda.device_count() < num_processes:
        raise ConfigError(
            f"{num_processes} processes on NCCL need as many GPUs; "
            f"{torch.cuda.device_count()} visible"
        )


def _launch_here(
    main_func: Callable[..., Any],
    num_processes: int,
    num_machines: int,
    machine_rank: int,
    args: Sequence[Any],
    backend: str,
    on_message: Callable[[Any], None] | None,
    timeout: datetime.timedelta,
) -> Any:
    """:func:`launch` under torchrun: this process is one rank of the group torchrun started."""
    global _handler
    env = torchrun_env()
    if env is None:
        raise ConfigError(
            "dist_url 'env://': not under torchrun (none of "
            f"{', '.join(_RANK_VARIABLES)} is set); start with torchrun or pass another dist_url"
        )
    asked = (num_processes, num_machines, machine_rank)
    if asked != (env.num_processes, env.num_machines, env.machine_rank):
        raise ConfigError(
            f"num_processes={num_processes}, num_machines={num_machines}, "
            f"machine_rank={machine_rank} contradict torchrun's environment: "
            f"{env.num_processes} process(es) per machine (LOCAL_WORLD_SIZE), "
            f"{env.num_machines} machine(s) (WORLD_SIZE={env.world_size}), this one of rank "
            f"{env.machine_rank} (RANK={env.rank})"
        )
    _check_gpus(backend, num_processes)
    # torchrun_env checked that RANK is machine_rank * num_processes + LOCAL_RANK.
    with _process_group(
        env.local_rank, num_processes, num_machines, machine_rank, "env://", backend, timeout
    ):
        _logger.info(
            "joined torchrun's %s process group of %d as rank %d (local rank %d of %d, "
            "machine %d of %d)",
            backend,
            env.world_size,
            env.rank,
            env.local_rank,
            num_processes,
            machine_rank,
            num_machines,
        )
        _handler = on_message if env.rank == 0 else None
        try:
            result = main_func(*args)
        finally:
            _handler = None
    return result if env.rank == 0 else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _drain(
    messages: Any, outcome: dict[str, Any], on_message: Callable[[Any], None] | None
) -> None:
    while True:
        try:
            if messages.empty():
                return
            kind, *payload = messages.get()
        except (EOFError, OSError, queue_module.Empty):
            return
        if kind == "message":
            if on_message is not None:
                on_message(payload[0])
        elif kind == "result":
            outcome["result"] = payload[0]
        else:
            outcome["errors"].append((payload[0], payload[1]))


def _failure(
    exc: ProcessException, errors: list[tuple[int, BaseException]], world_size: int
) -> SpnasError:
    for _, error in errors:
        if isinstance(error, SpnasError):
            return error
    detail = "; ".join(f"rank {rank}: {type(e).__name__}: {e}" for rank, e in errors)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # A raised exception's message is its traceback: its last line names the error.
    last = lines[-1] if lines else type(exc).__name__
    return DistributedError(
        f"data-parallel run of {world_size} processes failed: local process "
        f"{exc.error_index} (pid {exc.error_pid}): {last}" + (f"; {detail}" if detail else "")
    )


def _stop(context: Any) -> None:
    for process in context.processes:
        if process.is_alive():
            process.terminate()
    for process in context.processes:
        process.join()


def _worker(
    local_rank: int,
    main_func: Callable[..., Any],
    args: tuple[Any, ...],
    world_size: int,
    num_processes: int,
    machine_rank: int,
    dist_url: str,
    backend: str,
    timeout: datetime.timedelta,
    messages: Any,
    threads: int,
    launcher_pid: int,
    log_level: int,
) -> None:
    global _queue
    rank = machine_rank * num_processes + local_rank
    logging.basicConfig(
        level=log_level, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s"
    )
    threading.Thread(target=_exit_with, args=(launcher_pid,), daemon=True).start()
    torch.set_num_threads(threads)
    num_machines = world_size // num_processes
    with _process_group(
        local_rank, num_processes, num_machines, machine_rank, dist_url, backend, timeout
    ):
        _queue = messages if rank == 0 else None
        try:
            with contextlib.redirect_stdout(sys.stderr):
                result = main_func(*args)
        except BaseException as exc:
            messages.put(("error", rank, _picklable(exc)))
            raise
        if rank == 0:
            messages.put(("result", result))


@contextlib.contextmanager
def _process_group(
    local_rank: int,
    num_processes: int,
    num_machines: int,
    machine_rank: int,
    dist_url: str,
    backend: str,
    timeout: datetime.timedelta,
) -> Iterator[None]:
    """Join the process group as process ``local_rank`` of machine ``machine_rank`` (on NCCL,
    on GPU ``local_rank``), with its machine's local group, for the block; destroy it after."""
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend,
        init_method=dist_url,
        world_size=num_processes * num_machines,
        rank=machine_rank * num_processes + local_rank,
        timeout=timeout,
    )
    try:
        _create_local_group(num_machines, num_processes, machine_rank)
        yield
    finally:
        dist.destroy_process_group()


def _exit_with(launcher_pid: int) -> None:
    """Exit when the launching process is gone (killed: it could not stop us), so that a
    stopped search worker leaves no process training on its GPUs."""
    while os.getppid() == launcher_pid:
        time.sleep(1.0)
    os._exit(1)


def _create_local_group(num_machines: int, num_processes: int, machine_rank: int) -> None:
    """Create the group of each machine's processes (every process creates every group, as
    torch requires) and hand this machine's to detectron2, as its own launcher does."""
    local = None
    for machine in range(num_machines):
        ranks = list(range(machine * num_processes, (machine + 1) * num_processes))
        group = dist.new_group(ranks)
        if machine == machine_rank:
            local = group
    try:
        from detectron2.utils import comm
    except ImportError:  # the torchvision engine needs no local group
        return
    comm._LOCAL_PROCESS_GROUP = local


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


# ----------------------------------------------------------------- data-parallel trials


class _PostingReporter:
    """Rank 0's reporter: forwards progress and evaluations to the launching process."""

    def progress(self, iteration: int, total: int, loss: float) -> None:
        post(("progress", iteration, total, loss))

    def evaluation(self, iteration: int, metrics: Any) -> None:
        post(("evaluation", iteration, dict(metrics)))


def synced_norm(norm: str, device: torch.device) -> str:
    """The norm a data-parallel run on ``device`` trains with: ``BN`` becomes ``SyncBN`` on
    GPUs (detectron2's way; the same parameters and buffers, so the weights load into the
    ``BN`` network for evaluation and export). Other norms, and the CPU, where torch's
    ``SyncBatchNorm`` does not run (Gloo), keep theirs: a CPU run's batch-norm statistics are
    then each process's share's.
    """
    return "SyncBN" if norm == "BN" and device.type == "cuda" else norm


def data_parallel(train_eval: Callable[..., TrialResult]) -> Callable[..., TrialResult]:
    """Decorate an engine's ``train_eval``: run it in ``schedule.gpus_per_trial`` processes.

    With one process per trial, or inside a process group already, the engine's method runs
    as it is. Otherwise :func:`launch` runs it in every process (NCCL when the schedule's
    device is CUDA, else Gloo); global rank 0 writes the weights and its reporter forwards to
    ``reporter`` here, so pruning and the Optuna report happen in the caller's process.
    """

    @functools.wraps(train_eval)
    def wrapper(
        engine: Engine,
        spec: ModelSpec,
        init_weights: InitWeights | None,
        schedule: Schedule,
        data: DataSpec,
        reporter: Reporter | None = None,
        out_dir: str | Path = "output",
        *,
        checkpoint_dir: str | Path | None = None,
    ) -> TrialResult:
        if schedule.gpus_per_trial == 1 or dist.is_initialized():
            return train_eval(
                engine,
                spec,
                init_weights,
                schedule,
                data,
                reporter,
                out_dir,
                checkpoint_dir=checkpoint_dir,
            )
        check_one_gpu_each(
            schedule.device,
            schedule.gpus_per_trial,
            f"schedule device {schedule.device!r} with gpus_per_trial={schedule.gpus_per_trial}",
        )
        device = resolve_device(schedule.device)
        spec = dataclasses.replace(spec, norm=synced_norm(spec.norm, device))

        def forward(message: tuple[Any, ...]) -> None:
            if reporter is not None:
                getattr(reporter, message[0])(*message[1:])

        return launch(
            _train_eval_rank,
            schedule.gpus_per_trial,
            args=(
                engine,
                spec,
                init_weights,
                schedule,
                data,
                str(out_dir),
                None if checkpoint_dir is None else str(checkpoint_dir),
            ),
            backend="nccl" if device.type == "cuda" else "gloo",
            on_message=forward,
        )

    return wrapper


def _train_eval_rank(
    engine: Engine,
    spec: ModelSpec,
    init_weights: InitWeights | None,
    schedule: Schedule,
    data: DataSpec,
    out_dir: str,
    checkpoint_dir: str | None,
) -> TrialResult | None:
    reporter = _PostingReporter() if is_main_process() else None
    if not is_main_process():
        engine.show_progress = False
    result = engine.train_eval(
        spec, init_weights, schedule, data, reporter, out_dir, checkpoint_dir=checkpoint_dir
    )
    return result if is_main_process() else None
