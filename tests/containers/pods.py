"""Run the chart's pod specs as real containers with podman.

A container is started exactly as the rendered manifest says: image, command and args, env
from the rendered ConfigMap and the Secret (``envFrom`` and ``valueFrom`` resolved the way
the kubelet resolves them), user and group, read-only root filesystem, dropped capabilities,
no privilege escalation, emptyDir volumes at their mount paths (owned by the pod's fsGroup)
and nothing else writable. Probes are run against the container's own IP with the rendered
paths, ports, periods, timeouts and thresholds, and a stop honours the preStop hook and the
grace period. Nothing here is written for one workload: the spec decides.

Storage is the one `make images` builds into (``container_storage_flags`` of
k8s/container-tools.sh: overlay where the kernel allows it, else vfs, in a root of the
project's own); runs take an explicit open-files limit, since this kind of machine refuses
podman's default one.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def storage_flags() -> list[str]:
    """The storage flags `make images` used: asked of the same shell function, never restated."""
    script = f". {REPO / 'k8s' / 'container-tools.sh'} && container_storage_flags"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    return out.splitlines()


# The machine's hard open-files limit is below podman's default; NPROC likewise must stay under it.
ULIMITS = ["--ulimit", "nofile=1024:20000", "--ulimit", "nproc=4096:8192"]
# The same limits for what takes no --ulimit flag (`podman kube play`).
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")

Doc = dict[str, Any]


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``podman`` on the project's container storage."""
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    proc = subprocess.run(["podman", *storage_flags(), *args], capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} … failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


@dataclass
class Probe:
    """An httpGet probe as rendered (defaults as Kubernetes applies them)."""

    path: str
    port: int
    period: float = 10
    timeout: float = 1
    failure_threshold: int = 3

    @classmethod
    def parse(cls, probe: Doc | None, ports: dict[str, int]) -> Probe | None:
        if not probe:
            return None
        get = probe["httpGet"]
        port = get["port"]
        return cls(get.get("path", "/"), ports[port] if isinstance(port, str) else int(port), probe.get("periodSeconds", 10),
                   probe.get("timeoutSeconds", 1), probe.get("failureThreshold", 3))

    def check(self, ip: str) -> tuple[bool, str]:
        """One probe: success is an HTTP status in [200, 400), as the kubelet counts it."""
        try:
            r = httpx.get(f"http://{ip}:{self.port}{self.path}", timeout=self.timeout)
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return 200 <= r.status_code < 400, f"HTTP {r.status_code}"

    def wait(self, ip: str, attempts: int | None = None) -> list[str]:
        """Probe every period until one succeeds; raises after ``attempts`` (default the failure threshold) failures."""
        seen: list[str] = []
        for _ in range(attempts or self.failure_threshold):
            ok, what = self.check(ip)
            seen.append(what)
            if ok:
                return seen
            time.sleep(self.period)
        raise AssertionError(f"probe {self.path} on {ip}:{self.port} never passed: {seen[-5:]}")


@dataclass
class ContainerSpec:
    """One container of a rendered pod spec, resolved to what podman needs."""

    name: str
    image: str
    command: list[str] | None
    args: list[str] | None
    env: dict[str, str]
    user: int
    group: int
    fs_group: int | None
    read_only_root: bool
    drop_all: bool
    no_new_privileges: bool
    mounts: dict[str, Doc]  # mountPath -> the pod volume it mounts
    ports: dict[str, int]
    startup: Probe | None
    liveness: Probe | None
    readiness: Probe | None
    grace_seconds: int
    pre_stop: Doc | None = None
    extra: list[str] = field(default_factory=list)

    @classmethod
    def from_pod(cls, pod: Doc, container: str, configmaps: dict[str, Doc], secrets: dict[str, Doc],
                 metadata: Doc | None = None) -> ContainerSpec:
        """The container named ``container`` of ``pod`` (a pod template's spec; ``metadata`` is the template's)."""
        (c,) = [c for c in pod["containers"] if c["name"] == container]
        psc, sc = pod.get("securityContext") or {}, c.get("securityContext") or {}
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        ports = {p["name"]: p["containerPort"] for p in c.get("ports") or [] if "name" in p}
        return cls(
            name=c["name"], image=c["image"], command=c.get("command"), args=c.get("args"),
            env=resolve_env(c, configmaps, secrets, metadata or {}),
            user=sc.get("runAsUser", psc.get("runAsUser")), group=sc.get("runAsGroup", psc.get("runAsGroup")),
            fs_group=psc.get("fsGroup"), read_only_root=bool(sc.get("readOnlyRootFilesystem")),
            drop_all="ALL" in ((sc.get("capabilities") or {}).get("drop") or []),
            no_new_privileges=sc.get("allowPrivilegeEscalation") is False,
            mounts={m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts") or []},
            ports=ports,
            startup=Probe.parse(c.get("startupProbe"), ports), liveness=Probe.parse(c.get("livenessProbe"), ports),
            readiness=Probe.parse(c.get("readinessProbe"), ports),
            grace_seconds=pod.get("terminationGracePeriodSeconds", 30),
            pre_stop=((c.get("lifecycle") or {}).get("preStop")),
        )


def resolve_env(c: Doc, configmaps: dict[str, Doc], secrets: dict[str, Doc], metadata: Doc) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first, then env (which wins).

    A ``fieldRef`` to a label or an annotation reads the pod's ``metadata``; one that is absent is
    the empty string, as the kubelet makes it.
    """
    env: dict[str, str] = {}
    for src in c.get("envFrom") or []:
        if "configMapRef" in src:
            env.update(configmaps[src["configMapRef"]["name"]]["data"])
        elif "secretRef" in src:
            env.update(_secret_data(secrets[src["secretRef"]["name"]]))
    for e in c.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
            continue
        ref = e["valueFrom"]
        if "secretKeyRef" in ref:
            env[e["name"]] = _secret_data(secrets[ref["secretKeyRef"]["name"]])[ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            env[e["name"]] = configmaps[ref["configMapKeyRef"]["name"]]["data"][ref["configMapKeyRef"]["key"]]
        elif (field := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", (ref.get("fieldRef") or {}).get("fieldPath", ""))):
            env[e["name"]] = str((metadata.get(field[1]) or {}).get(field[2], ""))
        else:
            raise AssertionError(f"env {e['name']}: valueFrom {sorted(ref)} is not resolvable outside a cluster")
    return env


def _secret_data(secret: Doc) -> dict[str, str]:
    import base64

    out = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    out.update(secret.get("stringData") or {})
    return out


class Container:
    """A running container started from a ContainerSpec; ``ip`` is its address on the test network."""

    def __init__(self, spec: ContainerSpec, name: str, volumes_root: Path) -> None:
        self.spec, self.name, self.volumes_root = spec, name, volumes_root
        self.volume_dirs: dict[str, Path] = {}
        self.ip = ""

    def podman_args(self) -> list[str]:
        s = self.spec
        # seccompProfile RuntimeDefault is podman's default profile, so nothing to add for it.
        args = ["--name", self.name, "--user", f"{s.user}:{s.group}", *ULIMITS]
        if s.fs_group is not None:
            args += ["--group-add", str(s.fs_group)]
        if s.read_only_root:
            # --read-only-tmpfs=false: podman would otherwise mount writable tmpfs on /tmp, /var/tmp
            # and /run, which the pod does not have; only the chart's volumes may be writable.
            args += ["--read-only", "--read-only-tmpfs=false"]
        if s.drop_all:
            args += ["--cap-drop", "ALL"]
        if s.no_new_privileges:
            args += ["--security-opt", "no-new-privileges"]
        for path, volume in s.mounts.items():
            if "emptyDir" not in volume:
                raise AssertionError(f"{s.name}: volume {volume['name']} at {path} is not an emptyDir; extend pods.py")
            host = self.volumes_root / self.name / volume["name"]
            host.mkdir(parents=True, exist_ok=True)
            # An emptyDir belongs to the pod's fsGroup, as the kubelet sets it up.
            os.chown(host, s.user, s.fs_group if s.fs_group is not None else s.group)
            host.chmod(0o2770)
            self.volume_dirs[path] = host
            args += ["--volume", f"{host}:{path}:rw"]
        for key, value in s.env.items():
            args += ["--env", f"{key}={value}"]
        if s.command is not None:
            args += ["--entrypoint", json.dumps(s.command)]
        return [*args, *s.extra, s.image, *(s.args or [])]

    def start(self) -> Container:
        podman("run", "--detach", *self.podman_args())
        info = json.loads(podman("inspect", self.name).stdout)[0]
        self.ip = info["NetworkSettings"]["IPAddress"] or next(
            n["IPAddress"] for n in info["NetworkSettings"]["Networks"].values())
        return self

    def inspect(self) -> Doc:
        return json.loads(podman("inspect", self.name).stdout)[0]

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return (proc.stdout + proc.stderr)[-6000:]

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *cmd, check=False)

    def wait(self, timeout: float) -> int:
        """Wait for the container to exit; its exit code."""
        proc = podman("wait", self.name, timeout=timeout)
        return int(proc.stdout.strip().splitlines()[-1])

    def stop(self) -> tuple[int, float]:
        """Stop as the kubelet does: the preStop hook, then SIGTERM, then SIGKILL when the grace period
        (which the hook's time counts against) runs out. (exit code, seconds taken)."""
        t0 = time.monotonic()
        grace = self.spec.grace_seconds
        hook = self.spec.pre_stop or {}
        if "exec" in hook:
            podman("exec", self.name, *hook["exec"]["command"], check=False, timeout=grace)
        elif "sleep" in hook:
            time.sleep(min(hook["sleep"]["seconds"], grace))
        left = max(1, int(grace - (time.monotonic() - t0)))
        podman("stop", "--time", str(left), self.name, timeout=grace + 60)
        code = int(self.inspect()["State"]["ExitCode"])
        return code, time.monotonic() - t0

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


def wait_ready(container: Container, deadline: float = 60) -> dict[str, list[str]]:
    """Run the spec's probes as the kubelet would: startup until it passes (its own budget), then
    liveness once and readiness until Ready (within ``deadline`` seconds). What each probe saw."""
    spec = container.spec
    seen: dict[str, list[str]] = {}
    if spec.startup:
        try:
            seen["startup"] = spec.startup.wait(container.ip)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- container log ---\n{container.logs()}") from None
    if spec.liveness:
        ok, what = spec.liveness.check(container.ip)
        assert ok, f"liveness {spec.liveness.path} failed after startup: {what}\n{container.logs()}"
        seen["liveness"] = [what]
    if spec.readiness:
        attempts = max(1, int(deadline // spec.readiness.period))
        try:
            seen["readiness"] = spec.readiness.wait(container.ip, attempts)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- container log ---\n{container.logs()}") from None
    return seen
