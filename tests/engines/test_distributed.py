"""The launcher of data-parallel runs (real processes, Gloo on the CPU), the schedule's
data-parallel and AMP keys, and the GPUs ``spnas search`` gives each worker."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from spnas.device import resolve_amp
from spnas.engines import Schedule
from spnas.engines.distributed import DistributedError, get_world_size, launch, post
from spnas.exceptions import ConfigError, DataError
from spnas.search import worker_gpus

pytestmark = pytest.mark.processes


def _sum_of_ranks(offset: int) -> tuple[int, int]:
    """All-reduces the ranks; rank 0 posts a message. Returns (sum + offset, world size)."""
    value = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(value)
    post(("rank", dist.get_rank()))
    return int(value.item()) + offset, get_world_size()


def _rank_1_raises() -> None:
    if dist.get_rank() == 1:
        raise DataError("rank 1: bad record")
    dist.barrier()


def _rank_1_exits() -> None:
    if dist.get_rank() == 1:
        os._exit(3)
    dist.barrier()


def _write_pid_and_wait(folder: str) -> None:
    Path(folder, f"{dist.get_rank()}.pid").write_text(str(os.getpid()))
    time.sleep(600)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_processes_exit_when_the_launcher_is_killed(tmp_path: Path) -> None:
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from test_distributed import _write_pid_and_wait; "
        "from spnas.engines.distributed import launch; "
        f"launch(_write_pid_and_wait, 2, args=({str(tmp_path)!r},))"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("*.pid"))) < 2:
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.5)
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    # They check for their launcher every second.
    assert not [pid for pid in pids if _alive(pid)]


def test_launch_returns_rank_0_value_and_forwards_its_messages() -> None:
    messages: list[object] = []
    result = launch(_sum_of_ranks, 2, args=(10,), on_message=messages.append)
    # Ranks 0 and 1 summed over Gloo: 0 + 1; only rank 0 posts and returns.
    assert result == (11, 2)
    assert messages == [("rank", 0)]


def test_launch_with_one_process_runs_here() -> None:
    messages: list[object] = []
    assert launch(_sum_of_ranks_local, 1, on_message=messages.append) == 1
    assert messages == ["here"]


def _sum_of_ranks_local() -> int:
    post("here")
    return get_world_size()


def test_an_error_a_rank_raises_is_raised_as_itself() -> None:
    with pytest.raises(DataError, match="rank 1: bad record"):
        launch(_rank_1_raises, 2)


def test_a_rank_that_dies_fails_the_run() -> None:
    with pytest.raises(DistributedError, match="exit code 3"):
        launch(_rank_1_exits, 2)


def test_launch_rejects_bad_counts() -> None:
    with pytest.raises(ConfigError, match="machine_rank=2"):
        launch(_sum_of_ranks, 2, num_machines=2, machine_rank=2)
    with pytest.raises(ConfigError, match="dist_url 'auto'"):
        launch(_sum_of_ranks, 2, num_machines=2, machine_rank=0)


def test_schedule_splits_its_batch_evenly() -> None:
    assert Schedule(ims_per_batch=4, gpus_per_trial=2).gpus_per_trial == 2
    with pytest.raises(ConfigError, match=r"gpus_per_trial=3.*ims_per_batch=4"):
        Schedule(ims_per_batch=4, gpus_per_trial=3)
    with pytest.raises(ConfigError, match="gpus_per_trial=0"):
        Schedule(gpus_per_trial=0)
    assert Schedule.from_dict({"amp": True, "gpus_per_trial": 2}).to_dict()["amp"] is True


def test_amp_on_the_cpu_warns_and_trains_in_float32(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="spnas.device"):
        assert resolve_amp(True, "cpu") is False
    assert [r.getMessage() for r in caplog.records] == [
        "amp: mixed precision needs CUDA; training on cpu in float32"
    ]
    assert resolve_amp(False, "cpu") is False


def test_workers_get_their_own_gpus_round_robin() -> None:
    gpus = ["0", "1", "2", "3"]
    assert [worker_gpus(gpus, i, 2) for i in range(2)] == [["0", "1"], ["2", "3"]]
    # More workers than the devices allow share them (the GPU check's 2 workers on 1 GPU).
    assert [worker_gpus(["0"], i, 1) for i in range(2)] == [["0"], ["0"]]
    with pytest.raises(ConfigError, match="gpus_per_trial=2: only 1 GPU"):
        worker_gpus(["0"], 0, 2)


def test_spnas_train_refuses_one_named_gpu_for_several_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spnas.cli import main

    config = tmp_path / "config.yaml"  # never read: the flags are refused first
    code = main(["train", str(config), "--device", "cuda:1", "--num-gpus", "8"])
    error = capsys.readouterr().err
    assert code == 2, error
    assert "--device 'cuda:1' with --num-gpus 8" in error
    assert "each of the 8 processes takes its own GPU" in error and "CUDA_VISIBLE_DEVICES" in error
    assert "Traceback" not in error


def test_one_gpu_each_accepts_devices_without_an_index() -> None:
    from spnas.device import check_one_gpu_each
    from spnas.engines.distributed import data_parallel

    for device in ("cuda", "cpu", "auto", None):
        check_one_gpu_each(device, 8, "test")
    check_one_gpu_each("cuda:1", 1, "one process may name its GPU")
    # A trial's schedule gets the same check, before CUDA is looked for (none here).
    schedule = Schedule(device="cuda:0", ims_per_batch=2, gpus_per_trial=2, iters=1)
    with pytest.raises(ConfigError, match="schedule device 'cuda:0' with gpus_per_trial=2"):
        data_parallel(lambda *a: None)(None, None, None, schedule, None)


def test_data_parallel_batch_norm_is_synchronised_on_gpus() -> None:
    from spnas.engines.distributed import synced_norm

    assert synced_norm("BN", torch.device("cuda")) == "SyncBN"
    # torch's SyncBatchNorm does not run on the CPU; other norms have no batch statistics.
    assert synced_norm("BN", torch.device("cpu")) == "BN"
    for norm in ("GN", "FrozenBN", "SyncBN"):
        assert synced_norm(norm, torch.device("cuda")) == norm


def test_a_gpu_trial_sends_its_ranks_a_sync_bn_network(monkeypatch: pytest.MonkeyPatch) -> None:
    from spnas.engines import ModelSpec
    from spnas.engines import distributed as distributed_module
    from spnas.modeling import SerialNet

    launched: list[tuple] = []
    # This machine has no GPU: the device resolves as on one, the launch is recorded.
    monkeypatch.setattr(distributed_module, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(distributed_module, "launch", lambda *a, **kw: launched.append(kw["args"]))
    spec = ModelSpec("BB(11,d1,d1,d1)", num_classes=2, base_width=8, norm="BN")
    schedule = Schedule(device="cuda", ims_per_batch=2, gpus_per_trial=2, iters=1)
    distributed_module.data_parallel(lambda *a: None)(None, spec, None, schedule, None)
    ((_, sent, *_),) = launched
    assert sent.norm == "SyncBN"
    # What a SyncBN rank saves loads into the BN network that evaluates and exports it.
    synced = SerialNet("BB(11,d1,d1,d1)", base_width=8, norm="SyncBN")
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    SerialNet("BB(11,d1,d1,d1)", base_width=8, norm="BN").load_state_dict(synced.state_dict())


# ------------------------------------------------------------------ torchrun (env://)
TORCHRUN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}  # fmt: skip


def test_torchrun_env_reads_the_layout_and_refuses_a_broken_one() -> None:
    from spnas.engines.distributed import torchrun_env

    assert torchrun_env({"PATH": "/bin"}) is None
    env = torchrun_env(TORCHRUN)
    assert env is not None
    assert (env.num_processes, env.num_machines, env.machine_rank) == (2, 2, 1)
    broken = [
        ({"LOCAL_RANK": "0"}, "RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT"),
        ({**TORCHRUN, "MASTER_PORT": ""}, "MASTER_PORT not set"),
        ({**TORCHRUN, "WORLD_SIZE": "four"}, "WORLD_SIZE='four': expected an integer"),
        ({**TORCHRUN, "RANK": "4"}, "RANK=4, WORLD_SIZE=4.*0 <= RANK < WORLD_SIZE"),
        ({**TORCHRUN, "LOCAL_RANK": "-1"}, "LOCAL_RANK=-1.*0 <= LOCAL_RANK"),
        ({**TORCHRUN, "WORLD_SIZE": "5"}, "WORLD_SIZE=5.*same --nproc-per-node"),
        ({**TORCHRUN, "LOCAL_RANK": "0"}, "RANK=3.*LOCAL_RANK=0.*same --nproc-per-node"),
    ]
    for environ, message in broken:
        with pytest.raises(ConfigError, match=message):
            torchrun_env(environ)


def test_launch_env_joins_torchrun_s_group_here(monkeypatch: pytest.MonkeyPatch) -> None:
    from spnas.engines.distributed import _free_port

    port = str(_free_port())
    layout = {**TORCHRUN, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
              "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}  # fmt: skip
    for name, value in layout.items():
        monkeypatch.setenv(name, value)
    messages: list[object] = []
    result = launch(_sum_of_ranks, 1, dist_url="env://", args=(5,), on_message=messages.append)
    # Run here, in this process, inside the group (world size 1), which is gone after.
    assert result == (5, 1)
    assert messages == [("rank", 0)]
    assert not dist.is_initialized()


def test_launch_env_refuses_what_contradicts_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="dist_url 'env://': not under torchrun"):
        launch(_sum_of_ranks, 2, dist_url="env://")
    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=r"num_processes=4.*contradict.*2 process\(es\)"):
        launch(_sum_of_ranks, 4, num_machines=2, machine_rank=1, dist_url="env://")
    with pytest.raises(ConfigError, match=r"machine_rank=0 contradict.*rank 1 \(RANK=3\)"):
        launch(_sum_of_ranks, 2, num_machines=2, machine_rank=0, dist_url="env://")
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-gpus", "4"], "--num-gpus 4 contradicts torchrun's environment "
         r"\(LOCAL_WORLD_SIZE=2: 2\)"),
        (["--machine-rank", "0"], r"--machine-rank 0 contradicts.*RANK=3 // LOCAL_WORLD_SIZE"),
        (["--dist-url", "tcp://h:1"], "--dist-url tcp://h:1 contradicts"),
    ],
)  # fmt: skip
def test_spnas_train_under_torchrun_refuses_contradicting_flags(
    flags: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from spnas.cli import main

    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "config.yaml"  # never read: the flags are refused first
    assert main(["train", str(config), *flags]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert "Traceback" not in error
