"""The cluster recipes (``recipes/``) are valid, and their worker command lines run.

- ``recipes/slurm/spnas.sbatch``: bash syntax; one task per GPU; no storage URL on a command
  line; its connection budget matches ``spnas.storage``'s pools and fits PostgreSQL's default
  ``max_connections``; the script itself runs here (with an ``srun`` that records its options
  and runs its command once) against a finished study: by default through the storage proxy it
  starts on its own node (and stops), ``srun`` given ``--cpus-per-task``; directly with
  ``SPNAS_PROXY=0``, the URL from ``SPNAS_STORAGE`` or from ``SPNAS_STORAGE_FILE``, refused
  when the tasks' connections would not fit; and it refuses to run without ``SPNAS_STUDY``
  and one of those.
- ``recipes/kubernetes/*.yaml``: the kinds and fields of the Job, Deployments and Services
  (selectors match labels, the workers' storage URL names the proxy's Service and port), the
  NetworkPolicies (the database admits the proxy alone, the proxy the pods that use it); the
  proxy's and the workers' container commands, with Kubernetes' ``$(VAR)`` expansion, run here:
  a ``spnas storage-proxy`` in front of the study's database (its URL from the environment, as
  the Secret gives it, and not in its command line) and a worker through it; the creation Job
  runs ``spnas search … --workers 0``.

A worker on a finished study looks at it and returns at once: the commands are checked
end to end without training anything. The study is crafted from decided trials (seed, control,
one serial trial, parallel seed and control; the parallel phase has no trial budget and
nothing is verified), so no engine runs.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from spnas.arch import ParallelCode, SerialCode
from spnas.search import CONFIG_ATTR, Decision, SearchConfig, SearchState

pytestmark = pytest.mark.processes

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SBATCH = RECIPES / "slurm" / "spnas.sbatch"
KUBERNETES = RECIPES / "kubernetes"
SEED = "BB(11,d1,d1,d1)"
#: A worker on a finished study starts Python, reads the study and returns: seconds, measured
#: about 5 s on a loaded 2-core machine.
WORKER_TIMEOUT_S = 120


# --------------------------------------------------------------------------- a finished study
def finished_study(url: str, name: str = "recipe") -> None:
    """Create study ``name`` at ``url`` whose search is done (see the module docstring)."""
    config = SearchConfig.from_dict(
        {
            "study": {"name": name, "artifacts": "/nonexistent", "workdir": "/nonexistent"},
            "data": {"dir": "/nonexistent"},
            "model": {"seed_arch": SEED, "width": 8},
            "serial": {"n_rounds": 0, "max_trials": 1},
            "parallel": {"max_trials": 0},
            "verify": {"enabled": False},
            # The history below: one control per round, the greedy acceptance.
            "search": {"noise_repeats": 1, "acceptance": "greedy"},
        }
    )
    study = optuna.create_study(study_name=name, storage=url, direction=config.direction)
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    arch, zeros = SerialCode.parse(SEED), ParallelCode.zeros(4)
    decisions = [
        Decision("seed", arch=arch),
        Decision("control", arch=arch, parent=0, round=1),
        Decision("serial", arch=arch, parent=0, round=1),
        Decision("parallel_seed", arch=arch, parallel=zeros, parent=2),
        Decision("control", arch=arch, parallel=zeros, parent=3),
    ]
    for number, decision in enumerate(decisions):
        study.add_trial(
            optuna.trial.create_trial(value=30.0 + number, system_attrs=decision.to_attrs())
        )
    assert SearchState.from_trials(study.get_trials(), config).phase == "done"


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A directory with ``spnas`` (this tree's CLI) and ``srun`` (runs its command once, after
    appending its options and the storage it passes on to ``$SRUN_LOG``)."""
    path = tmp_path / "bin"
    path.mkdir()
    (path / "spnas").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m spnas "$@"\n')
    # srun's options come first (--name=value or a flag); the command follows.
    (path / "srun").write_text(
        "#!/bin/bash\n"
        'options=(); while [[ $1 == -* ]]; do options+=("$1"); shift; done\n'
        'echo "${options[*]} storage=${SPNAS_STORAGE:-}" >> "${SRUN_LOG:-/dev/null}"\n'
        'exec "$@"\n'
    )
    for tool in path.iterdir():
        tool.chmod(0o755)
    return path


def _env(bin_dir: Path, **values: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **values}


def _sbatch(env: Mapping[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the SLURM recipe as its batch step, with fake ``srun``/``spnas`` from ``env``."""
    return subprocess.run(
        ["bash", str(SBATCH)],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
        cwd=cwd,
    )


# --------------------------------------------------------------------------- SLURM
def test_sbatch_is_valid_bash_with_one_worker_per_gpu() -> None:
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    directives = dict(
        re.match(r"#SBATCH --([\w-]+)=(\S+)", line).groups()  # type: ignore[union-attr]
        for line in text.splitlines()
        if line.startswith("#SBATCH")
    )
    assert directives["gpus-per-task"] == "1"
    assert int(directives["ntasks-per-node"]) >= 1
    command = " ".join(text.replace("\\\n", " ").split("\nsrun ", 1)[1].split("\n", 1)[0].split())
    assert 'spnas worker --study "$SPNAS_STUDY" ${storage[@]+"${storage[@]}"}' in command
    # The URL (with its password) never on a command line: from the environment or a file.
    commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("--storage " in line or '$SPNAS_STORAGE"' in line for line in commands)
    assert "--workers 0" in text  # the creation step


#: PostgreSQL's default max_connections, and those it reserves for superusers.
PG_MAX_CONNECTIONS = 100
PG_RESERVED = 3


def _budget() -> dict[str, int]:
    text = SBATCH.read_text()
    return {
        key: int(re.search(rf"^{key}=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
        for key in ("connections_per_worker", "connections_for_jobs")
    }


def test_sbatch_connection_budget_fits_postgresql_defaults() -> None:
    from spnas.storage import DEFAULT_PROXY_THREADS, MAX_OVERFLOW, POOL_SIZE

    budget = _budget()
    # A worker opens one pool (test_a_worker_opens_the_storage_once).
    assert budget["connections_per_worker"] == POOL_SIZE + MAX_OVERFLOW
    # Headroom for the creation step, `spnas status`, the dashboard: 10 % of the server.
    headroom = PG_MAX_CONNECTIONS - PG_RESERVED - budget["connections_for_jobs"]
    assert headroom >= PG_MAX_CONNECTIONS // 10
    # The default job goes through the proxy: its threads are what the database sees.
    lines = SBATCH.read_text().splitlines()
    (proxy,) = [line for line in lines if line.lstrip().startswith("spnas storage-proxy")]
    assert "--threads" not in proxy  # the default, DEFAULT_PROXY_THREADS
    assert budget["connections_for_jobs"] >= DEFAULT_PROXY_THREADS


def test_sbatch_runs_its_worker_through_its_proxy(tmp_path: Path, bin_dir: Path) -> None:
    pytest.importorskip("grpc", reason="the storage proxy needs grpcio")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    finished_study(url)
    port = str(_free_port())
    log = tmp_path / "srun.log"
    env = _env(
        bin_dir,
        SPNAS_STUDY="recipe",
        SPNAS_STORAGE=url,
        SLURM_CPUS_PER_TASK="3",
        SPNAS_PROXY_HOST="127.0.0.1",
        SPNAS_PROXY_PORT=port,
        SRUN_LOG=str(log),
    )
    result = _sbatch(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "study 'recipe' is done" in result.stderr
    (srun,) = log.read_text().splitlines()
    assert "--cpus-per-task=3" in srun.split()
    assert srun.endswith(f"storage=grpc://127.0.0.1:{port}"), srun
    # The proxy stopped with the job: its port is free again.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(port)))


def test_sbatch_runs_with_the_storage_in_a_file(tmp_path: Path, bin_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    finished_study(url)
    secret = tmp_path / "storage"
    secret.write_text(url + "\n")
    secret.chmod(0o600)
    log = tmp_path / "srun.log"
    env = _env(
        bin_dir,
        SPNAS_STUDY="recipe",
        SPNAS_STORAGE_FILE=str(secret),
        SPNAS_PROXY="0",
        SLURM_NTASKS="13",
        SRUN_LOG=str(log),
    )
    env.pop("SPNAS_STORAGE", None)
    result = _sbatch(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "study 'recipe' is done" in result.stderr
    assert log.read_text().split() == ["--kill-on-bad-exit=0", "--cpus-per-task=1", "storage="]
    no_storage = {k: v for k, v in env.items() if k != "SPNAS_STORAGE_FILE"}
    refused = _sbatch(no_storage)
    assert refused.returncode != 0 and "SPNAS_STORAGE_FILE" in refused.stderr


def test_sbatch_refuses_more_direct_workers_than_connections(bin_dir: Path) -> None:
    budget = _budget()
    workers = budget["connections_for_jobs"] // budget["connections_per_worker"] + 1
    env = _env(
        bin_dir,
        SPNAS_STUDY="recipe",
        SPNAS_STORAGE="postgresql+psycopg2://spnas:secret@db/spnas",
        SPNAS_PROXY="0",
        SLURM_NTASKS=str(workers),
    )
    result = _sbatch(env)
    assert result.returncode == 1
    needed = workers * budget["connections_per_worker"]
    assert f"{workers} workers on the database hold up to {needed} connections" in result.stderr
    assert "SPNAS_PROXY=1" in result.stderr and "secret" not in result.stderr


def test_sbatch_refuses_to_run_without_the_study_and_storage(bin_dir: Path) -> None:
    env = _env(bin_dir)
    env.pop("SPNAS_STUDY", None)
    env.pop("SPNAS_STORAGE", None)
    result = _sbatch(env)
    assert result.returncode != 0
    assert "SPNAS_STUDY" in result.stderr


# --------------------------------------------------------------------------- Kubernetes
def _manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of ``recipes/kubernetes/*.yaml``, by (kind, name)."""
    objects = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _container_env(container: dict[str, Any]) -> dict[str, str | None]:
    """A container's environment variables with a literal value (``None``: from a Secret)."""
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _grpc_url(service: dict[str, Any]) -> str:
    """The storage URL that reaches ``service`` (the storage proxy's) inside the cluster."""
    return f"grpc://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


def _service_for(objects: dict, deployment: str) -> dict[str, Any]:
    """The Service whose selector picks the pods of ``deployment``."""
    labels = objects[("Deployment", deployment)]["spec"]["template"]["metadata"]["labels"]
    services = [
        obj
        for (kind, _), obj in objects.items()
        if kind == "Service" and obj["spec"]["selector"].items() <= labels.items()
    ]
    assert len(services) == 1, f"{deployment}: {len(services)} Services select its pods"
    return services[0]


def test_kubernetes_manifests_have_workers_database_and_proxy() -> None:
    objects = _manifests()
    job = objects[("Job", "spnas-workers")]
    assert job["apiVersion"] == "batch/v1" and job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["parallelism"] >= 1
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy
    # A preempted worker exits 143 (128 + SIGTERM): its pod is replaced, not counted a failure.
    rules = job["spec"]["podFailurePolicy"]["rules"]
    on_codes = [r["onExitCodes"] for r in rules if r["action"] == "Ignore" and "onExitCodes" in r]
    assert on_codes == [{"containerName": "worker", "operator": "In", "values": [143]}]
    assert any(c["type"] == "DisruptionTarget" for r in rules for c in r.get("onPodConditions", []))
    worker = _container(job)
    assert worker["command"][:2] == ["spnas", "worker"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1

    for name, port in (("spnas-postgres", 5432), ("spnas-storage-proxy", 13000)):
        deployment = objects[("Deployment", name)]
        assert deployment["apiVersion"] == "apps/v1"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        service = _service_for(objects, name)
        assert [p["port"] for p in service["spec"]["ports"]] == [port]
        assert _container(deployment)["ports"][0]["containerPort"] == port

    proxy = _container(objects[("Deployment", "spnas-storage-proxy")])
    assert proxy["command"][:2] == ["spnas", "storage-proxy"]
    # The password comes from a Secret as SPNAS_STORAGE, never from the manifest, and no
    # command line holds a storage URL.
    (database_url,) = [e for e in proxy["env"] if e["name"] == "SPNAS_STORAGE"]
    assert "secretKeyRef" in database_url["valueFrom"]
    storage = _container_env(worker)["SPNAS_STORAGE"]
    assert storage == _grpc_url(_service_for(objects, "spnas-storage-proxy"))
    create = objects[("Job", "spnas-create-study")]
    creator = _container(create)
    assert creator["command"][:2] == ["spnas", "search"] and creator["command"][-2:] == [
        "--workers",
        "0",
    ]
    assert _container_env(creator)["SPNAS_STORAGE"] == storage
    for container in (proxy, worker, creator):
        assert not any("--storage" in part or "STORAGE)" in part for part in container["command"])


def _pod_labels(objects: dict) -> dict[tuple[str, str], dict[str, str]]:
    """The labels of the pods of every Job and Deployment, by (kind, name)."""
    return {
        key: obj["spec"]["template"].get("metadata", {}).get("labels", {})
        for key, obj in objects.items()
        if key[0] in ("Job", "Deployment")
    }


def test_kubernetes_network_policies_admit_only_the_storage_clients() -> None:
    """The database admits the proxy alone, and the unauthenticated proxy admits exactly the
    pods that use it (those whose SPNAS_STORAGE names it), each on its Service's port."""
    objects = _manifests()
    pods = _pod_labels(objects)
    proxy_url = _grpc_url(_service_for(objects, "spnas-storage-proxy"))
    clients = {
        key
        for key in pods
        if _container_env(_container(objects[key])).get("SPNAS_STORAGE") == proxy_url
    }
    assert clients == {("Job", "spnas-workers"), ("Job", "spnas-create-study")}
    expected = {
        "spnas-postgres": {("Deployment", "spnas-storage-proxy")},
        "spnas-storage-proxy": clients,
    }
    for server, admitted in expected.items():
        labels = pods[("Deployment", server)]
        (policy,) = [
            obj
            for (kind, _), obj in objects.items()
            if kind == "NetworkPolicy"
            and obj["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert policy["apiVersion"] == "networking.k8s.io/v1"
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        port = _service_for(objects, server)["spec"]["ports"][0]["port"]
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]
        # Pods of this namespace only (no namespaceSelector or ipBlock), chosen by label.
        (source,) = rule["from"]
        assert set(source) == {"podSelector"}
        selector = source["podSelector"]["matchLabels"].items()
        assert {key for key, pod in pods.items() if selector <= pod.items()} == admitted, server


def _expand(command: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' expansion of ``$(VAR)`` in a container's command."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], part) for part in command]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_kubernetes_worker_runs_through_the_storage_proxy(tmp_path: Path, bin_dir: Path) -> None:
    pytest.importorskip("grpc", reason="the storage proxy needs grpcio")
    objects = _manifests()
    proxy = _container(objects[("Deployment", "spnas-storage-proxy")])
    worker = _container(objects[("Job", "spnas-workers")])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    finished_study(url)
    # The cluster's names become this machine's: the Service is 127.0.0.1 on a free port.
    port = str(_free_port())
    service = objects[("Service", "spnas-storage-proxy")]
    service_port = str(service["spec"]["ports"][0]["port"])
    proxy_command = _expand(proxy["command"], {})
    proxy_command[proxy_command.index("--port") + 1] = port
    worker_env = _container_env(worker)
    worker_env["SPNAS_STUDY"] = "recipe"
    worker_env["SPNAS_STORAGE"] = worker_env["SPNAS_STORAGE"].replace(
        f"{service['metadata']['name']}:{service_port}", f"127.0.0.1:{port}"
    )
    server = subprocess.Popen(
        proxy_command,
        env=_env(bin_dir, SPNAS_STORAGE=url),  # as the Secret gives it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        result = subprocess.run(
            _expand(worker["command"], worker_env),
            env=_env(bin_dir, **worker_env),
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
        )
        assert result.returncode == 0, result.stderr
        assert "study 'recipe' is done" in result.stderr
        # What `ps` shows of the proxy (its shell wrapper exec'd into Python) holds no URL.
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "storage-proxy" in cmdline and url not in cmdline, cmdline
    finally:
        os.killpg(server.pid, 9)
        server.wait()
