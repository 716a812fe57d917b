"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok fake nodes, built from Go modules by `scripts/kube-binaries.sh`.

What a user gets from `policy-rollouts cluster up` and what the tests' session fixture starts:
an API server with RBAC and Node authorizers, service-account tokens and its default admission
plugins, the controllers our rollouts rely on (Deployments, ReplicaSets, Jobs, garbage
collection, namespaces, service accounts), a scheduler, and kwok nodes on which pods become
Running and Ready without a kubelet. No container runs: pods are status only (see
`kwok-stages.yaml`). Processes are started detached and recorded by PID in the cluster
directory, so `cluster down` (or another process) can stop exactly them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rollout_operator.cluster import pki
from rollout_operator.cluster.ports import free_port
from rollout_operator.errors import RolloutOperatorError

REPO_ROOT = Path(__file__).resolve().parents[3]
BINARIES_SCRIPT = REPO_ROOT / "scripts" / "kube-binaries.sh"
KWOK_STAGES = Path(__file__).with_name("kwok-stages.yaml")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"  # the first address of SERVICE_CIDR: the `kubernetes` Service
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# The controllers a PolicyRollout's objects need: Deployments make ReplicaSets make Pods, Jobs make
# Pods, owner references are collected, namespaces are cleaned up, service accounts get tokens, and
# the node lifecycle controller lifts the not-ready taint admission puts on new nodes once kwok
# reports them Ready (and keeps them so through kwok's lease renewals).
CONTROLLERS = (
    "deployment-controller", "replicaset-controller", "job-controller", "garbage-collector-controller",
    "namespace-controller", "serviceaccount-controller", "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller", "node-lifecycle-controller",
)
START_TIMEOUT_S = 120.0
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")
# Every request of a client that is not part of the control plane itself, at Metadata level
# (who, verb, resource, namespace, name): what the operator really called, for RBAC reviews and
# for tests that count calls.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "users": ["system:kube-controller-manager", "system:kube-scheduler", "kwok-controller",
                                    "system:apiserver"]},
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system", "system:nodes"]},
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version", "/api*", "/openapi*"]},
        {"level": "Metadata"},
    ],
}

Progress = Callable[[str], None]


class ClusterError(RolloutOperatorError, RuntimeError):
    """The control plane could not be built, started or reached; the message says what to do."""


def binaries(progress: Progress = print) -> Path:
    """The directory of the cached binaries, building the missing ones first (minutes when cold).

    Go is needed only to build: the script says what to install when it is missing.
    """
    if explicit := os.environ.get("POLICY_ROLLOUTS_KUBE_BIN"):
        return Path(explicit)
    printed = subprocess.run(["bash", str(BINARIES_SCRIPT), "--print"], check=True, capture_output=True, text=True)
    bin_dir = Path(printed.stdout.strip())
    if not all((bin_dir / b).is_file() for b in BINARIES):
        progress(f"building the control plane binaries into {bin_dir} (about 12 minutes when cold)")
        built = subprocess.run(["bash", str(BINARIES_SCRIPT)], stdout=subprocess.PIPE, text=True)
        if built.returncode != 0:
            raise ClusterError(f"building the control plane failed (exit {built.returncode}): "
                               f"rerun 'bash {BINARIES_SCRIPT}' to see why")
    return bin_dir


def _kubeconfig(server: str, ca: Path, user: str, credentials: dict[str, str],
                namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "policy-rollouts", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": "policy-rollouts", "user": user, "namespace": namespace}}],
        "current-context": user,
    }


class ControlPlane:
    """Start, reach and stop one control plane whose files all live in `directory`."""

    def __init__(self, directory: Path, nodes: int = 1, gpu_nodes: int = 1) -> None:
        self.directory = directory.resolve()
        self.nodes = nodes
        self.gpu_nodes = gpu_nodes
        self.pki_dir = self.directory / "pki"
        self.log_dir = self.directory / "logs"
        self.pid_file = self.directory / "pids.json"
        self.kubeconfig = self.directory / "kubeconfig"
        self.audit_log = self.log_dir / "audit.log"
        self.server = ""
        self.bin_dir: Path | None = None
        # How each component was started and how to tell it answers: what restart() needs.
        self._argv: dict[str, list[str]] = {}
        self._ready: dict[str, Callable[[], bool]] = {}

    # ----------------------------------------------------------------------------- starting

    def start(self, progress: Progress = print) -> ControlPlane:
        if self.running():
            raise ClusterError(f"a control plane already runs from {self.directory}: "
                               "stop it first (policy-rollouts cluster down)")
        bin_dir = self.bin_dir = binaries(progress)
        for sub in ("pki", "logs", "etcd", "kwok"):
            shutil.rmtree(self.directory / sub, ignore_errors=True)
        self.pki_dir.mkdir(parents=True)
        self.log_dir.mkdir(parents=True)
        self.pid_file.write_text("{}")
        try:
            self._start(bin_dir, progress)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, bin_dir: Path, progress: Progress) -> None:
        ca = pki.CertificateAuthority(self.pki_dir)
        serving = ca.serving(ips=("127.0.0.1", KUBERNETES_SERVICE_IP))
        sa = pki.service_account_keys(self.pki_dir)
        apiserver_port, etcd_port, etcd_peer = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{apiserver_port}"
        clients = {
            "admin": ca.client("admin", "kubernetes-admin", "system:masters"),
            "controller-manager": ca.client("controller-manager", "system:kube-controller-manager"),
            "scheduler": ca.client("scheduler", "system:kube-scheduler"),
            # kwok plays the kubelet of every fake node; the Node authorizer would confine a real
            # kubelet to its own node, so it runs as a cluster admin instead.
            "kwok": ca.client("kwok", "kwok-controller", "system:masters"),
        }
        kubeconfigs = {}
        for name, pair in clients.items():
            path = self.directory / ("kubeconfig" if name == "admin" else f"{name}.kubeconfig")
            user = "admin" if name == "admin" else name
            path.write_text(yaml.safe_dump(_kubeconfig(self.server, ca.cert_path, user,
                                                       {"client-certificate": str(pair.cert),
                                                        "client-key": str(pair.key)})))
            kubeconfigs[name] = path

        progress(f"starting etcd on 127.0.0.1:{etcd_port}")
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn("etcd", [
            str(bin_dir / "etcd"), "--name", "policy-rollouts", "--data-dir", str(self.directory / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"policy-rollouts=http://127.0.0.1:{etcd_peer}",
            # A throwaway cluster: durability is not worth the fsyncs on a shared 2-core machine.
            "--unsafe-no-fsync", "--log-level", "warn", "--quota-backend-bytes", str(4 * 1024**3),
        ])
        self._ready["etcd"] = lambda: b'"health":"true"' in urllib.request.urlopen(f"{etcd_url}/health",
                                                                                  timeout=2).read()
        self._wait(self._ready["etcd"], "etcd", "etcd")

        progress(f"starting kube-apiserver on {self.server}")
        audit_policy = self.directory / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self._spawn("kube-apiserver", [
            str(bin_dir / "kube-apiserver"), "--etcd-servers", etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(apiserver_port),
            "--tls-cert-file", str(serving.cert), "--tls-private-key-file", str(serving.key),
            "--client-ca-file", str(ca.cert_path),
            "--authorization-mode", "Node,RBAC",
            "--service-account-issuer", SERVICE_ACCOUNT_ISSUER,
            "--service-account-key-file", str(sa.cert), "--service-account-signing-key-file", str(sa.key),
            "--service-cluster-ip-range", SERVICE_CIDR,
            "--enable-admission-plugins", "NodeRestriction",
            "--audit-policy-file", str(audit_policy), "--audit-log-path", str(self.audit_log),
            "--audit-log-mode", "blocking", "--audit-log-format", "json",
            # Never rotate (the default rotates at 100 MB): readers keep byte offsets into this one file.
            "--audit-log-maxsize", "1000000",
            # Loopback cannot be advertised in the `kubernetes` Endpoints, and no pod here would call it.
            "--endpoint-reconciler-type", "none",
            "--allow-privileged=false", "--profiling=false", "--event-ttl", "1h", "--v", "1",
        ])
        context = ssl.create_default_context(cafile=str(ca.cert_path))
        context.load_cert_chain(str(clients["admin"].cert), str(clients["admin"].key))
        self._ready["kube-apiserver"] = lambda: urllib.request.urlopen(f"{self.server}/readyz", context=context,
                                                                       timeout=5).read() == b"ok"
        self._wait(self._ready["kube-apiserver"], "kube-apiserver", "kube-apiserver")

        progress("starting kube-controller-manager and kube-scheduler")
        self._spawn("kube-controller-manager", [
            str(bin_dir / "kube-controller-manager"), "--kubeconfig", str(kubeconfigs["controller-manager"]),
            "--authentication-kubeconfig", str(kubeconfigs["controller-manager"]),
            "--authorization-kubeconfig", str(kubeconfigs["controller-manager"]),
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()),
            "--controllers", ",".join(CONTROLLERS), "--use-service-account-credentials",
            "--service-account-private-key-file", str(sa.key), "--root-ca-file", str(ca.cert_path),
            "--leader-elect=false", "--v", "1",
            # The defaults (20 QPS per controller) take ~20 minutes to roll out 4,000 Deployments.
            "--kube-api-qps", "200", "--kube-api-burst", "400",
            "--concurrent-deployment-syncs", "10", "--concurrent-replicaset-syncs", "10",
        ])
        self._spawn("kube-scheduler", [
            str(bin_dir / "kube-scheduler"), "--kubeconfig", str(kubeconfigs["scheduler"]),
            "--authentication-kubeconfig", str(kubeconfigs["scheduler"]),
            "--authorization-kubeconfig", str(kubeconfigs["scheduler"]),
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()),
            "--leader-elect=false", "--v", "1", "--kube-api-qps", "200", "--kube-api-burst", "400",
        ])

        progress(f"starting kwok with {self.nodes} fake node(s) and {self.gpu_nodes} fake GPU node(s)")
        self._spawn("kwok", [
            str(bin_dir / "kwok"), "--kubeconfig", str(kubeconfigs["kwok"]), "--config", str(KWOK_STAGES),
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector", f"{KWOK_NODE_ANNOTATION}=fake",
            "--cidr", "10.244.0.1/16", "--node-ip", "10.240.0.1", "--node-lease-duration-seconds", "40",
            "--server-address", f"127.0.0.1:{free_port()}",
        ])
        from rollout_operator import kube

        client = kube.Client.from_kubeconfig(self.kubeconfig)
        try:
            for node in self._nodes():
                client.apply(node)
            total = self.nodes + self.gpu_nodes
            self._wait(lambda: sum(_ready(n) for n in client.list("v1", "Node")) == total,
                       "kwok nodes to become Ready", "kwok")
            # Pods of a namespace are admitted only once its `default` ServiceAccount exists.
            self._wait(lambda: client.find("v1", "ServiceAccount", "default", "default") is not None,
                       "the default ServiceAccount", "kube-controller-manager")
        finally:
            client.close()
        progress(f"control plane ready: KUBECONFIG={self.kubeconfig}")

    def _nodes(self) -> list[dict[str, Any]]:
        """Node objects for kwok to play: plain ones, and GPU ones tainted as GPU pools usually are."""
        nodes = []
        for index in range(self.nodes + self.gpu_nodes):
            gpu = index >= self.nodes
            name = f"kwok-gpu-node-{index - self.nodes}" if gpu else f"kwok-node-{index}"
            labels = {"type": "kwok", "kubernetes.io/hostname": name}
            spec: dict[str, Any] = {}
            if gpu:
                labels["nvidia.com/gpu.present"] = "true"
                spec["taints"] = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
            nodes.append({"apiVersion": "v1", "kind": "Node", "spec": spec,
                          "metadata": {"name": name, "annotations": {KWOK_NODE_ANNOTATION: "fake"}, "labels": labels}})
        return nodes

    def _spawn(self, name: str, argv: list[str]) -> None:
        self._argv[name] = argv
        log = (self.log_dir / f"{name}.log").open("ab")
        try:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=self.directory, start_new_session=True)
        finally:
            log.close()
        pids = json.loads(self.pid_file.read_text())
        pids[name] = process.pid
        self.pid_file.write_text(json.dumps(pids))

    def _wait(self, check: Callable[[], bool], what: str, process: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not _alive(self._pids().get(process)):
                raise ClusterError(f"{process} exited while waiting for {what}: see {self.log_dir / process}.log")
            try:
                if check():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {START_TIMEOUT_S:.0f}s waiting for {what}: "
                                   f"see {self.log_dir}/{process}.log")
            time.sleep(0.2)

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run the kubectl built with this control plane (same release) as the admin."""
        assert self.bin_dir is not None, "start() the control plane first"
        return subprocess.run([str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
                              input=stdin, capture_output=True, text=True, timeout=timeout, check=False)

    def restart(self, name: str, *, crash: bool = True, down_seconds: float = 0.0,
                while_down: Callable[[], None] | None = None) -> None:
        """Stop one component (SIGKILL when `crash`, else SIGTERM), keep it down `down_seconds` (and run
        `while_down`), start it again with the same arguments and data, and return once it answers: a
        crash and a supervisor's restart, for the chaos tests."""
        if name not in self._argv:
            raise ClusterError(f"no component {name!r} was started here; components: {', '.join(self._argv)}")
        pid = self._pids().get(name)
        if pid is not None:
            _signal(pid, signal.SIGKILL if crash else signal.SIGTERM)
            deadline = time.monotonic() + 15.0
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            _signal(pid, signal.SIGKILL)
        down_until = time.monotonic() + down_seconds
        if while_down is not None:
            while_down()
        time.sleep(max(0.0, down_until - time.monotonic()))
        self._spawn(name, self._argv[name])
        check = self._ready.get(name)
        if check is not None:
            self._wait(check, f"{name} to answer after its restart", name)

    # ----------------------------------------------------------------------------- stopping

    def _pids(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self.pid_file.read_text()).items()}
        except (OSError, ValueError):
            return {}

    def running(self) -> bool:
        return any(_alive(pid) for pid in self._pids().values())

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every recorded process (newest first), SIGKILL what is left after `timeout`."""
        pids = list(self._pids().items())
        for _, pid in reversed(pids):
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for _, pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for _, pid in pids:
            _signal(pid, signal.SIGKILL)
        if self.pid_file.exists():
            self.pid_file.write_text("{}")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def _alive(pid: int | None) -> bool:
    """Running (not exited, not a zombie). `cluster up` exits and leaves its processes to init,
    which need not reap them at once: an exited one can linger as a zombie."""
    if pid is None:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own exited child: reaped now
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
