"""Where the Kubernetes API server is and how to authenticate to it.

``resolve`` looks, in this order (as controller-runtime does):

1. an explicit server URL (``--kube-api-server``): no credentials, e.g. ``kubectl
   proxy`` or a test server;
2. a kubeconfig file (``--kubeconfig``, else the first existing file of ``KUBECONFIG``):
   its current context's cluster (``server``, ``certificate-authority[-data]``,
   ``insecure-skip-tls-verify``) and user (``token``, ``tokenFile``,
   ``client-certificate[-data]`` + ``client-key[-data]``); exec and auth-provider
   plugins are not supported (use a token);
3. in cluster: ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` with the
   service account's token (re-read as it rotates) and CA from
   ``/var/run/secrets/kubernetes.io/serviceaccount/``;
4. ``~/.kube/config``.

Runs once at start, before the event loop serves anything (reads small local files).
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass
class KubeConfig:
    server: str  # scheme://host:port, no trailing slash
    token: str | None = None
    token_file: str | None = None  # re-read periodically (bound tokens rotate)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    namespace: str | None = None  # the context's or the service account's namespace
    source: str = ""  # where this came from, for the log

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.server.startswith("https://"):
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def in_cluster(env: Mapping[str, str], sa_dir: Path = SA_DIR) -> KubeConfig | None:
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    token = sa_dir / "token"
    if not host or not port or not token.exists():
        return None
    ns = sa_dir / "namespace"
    ca = sa_dir / "ca.crt"
    return KubeConfig(
        server=f"https://{_host_port(host, port)}",
        token_file=str(token),
        ca_file=str(ca) if ca.exists() else None,
        namespace=ns.read_text().strip() if ns.exists() else None,
        source="in-cluster service account",
    )


def _named(items: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items or ():
        if isinstance(item, dict) and item.get("name") == name:
            value = item.get(what)
            return value if isinstance(value, dict) else {}
    raise ValueError(f"{path}: no {what} named {name!r}")


def _data_file(data: str, suffix: str) -> str:
    """Writes base64 ``*-data`` to a private temporary file (ssl wants file names)."""
    fd, name = tempfile.mkstemp(prefix="picker-kube-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data))
    return name


def from_kubeconfig(path: Path, context: str | None = None) -> KubeConfig:
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a kubeconfig")
    name = context or doc.get("current-context")
    if not name:
        raise ValueError(f"{path}: no current-context")
    ctx = _named(doc.get("contexts"), name, "context", path)
    cluster = _named(doc.get("clusters"), str(ctx.get("cluster")), "cluster", path)
    user = _named(doc.get("users"), str(ctx.get("user")), "user", path) if ctx.get("user") else {}
    base = path.parent

    def rel(p: Any) -> str | None:
        return str(base / str(p)) if p else None

    if not cluster.get("server"):
        raise ValueError(f"{path}: cluster {ctx.get('cluster')!r} has no server")
    if "exec" in user or "auth-provider" in user:
        raise ValueError(
            f"{path}: user {ctx.get('user')!r} authenticates with an exec or auth-provider "
            "plugin, which picker does not run; give it a token or a client certificate"
        )
    cfg = KubeConfig(
        server=str(cluster["server"]).rstrip("/"),
        token=user.get("token"),
        token_file=rel(user.get("tokenFile")),
        ca_file=rel(cluster.get("certificate-authority")),
        cert_file=rel(user.get("client-certificate")),
        key_file=rel(user.get("client-key")),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        namespace=ctx.get("namespace"),
        source=f"kubeconfig {path} (context {name})",
    )
    if cluster.get("certificate-authority-data"):
        cfg.ca_file = _data_file(cluster["certificate-authority-data"], ".crt")
    if user.get("client-certificate-data"):
        cfg.cert_file = _data_file(user["client-certificate-data"], ".crt")
    if user.get("client-key-data"):
        cfg.key_file = _data_file(user["client-key-data"], ".key")
    return cfg


def resolve(
    api_server: str | None = None,
    kubeconfig: str | None = None,
    env: Mapping[str, str] | None = None,
    sa_dir: Path = SA_DIR,
) -> KubeConfig:
    """The API server and credentials to use; raises ValueError when there are none."""
    env = os.environ if env is None else env
    if api_server:
        if not api_server.startswith(("http://", "https://")):
            raise ValueError(f"--kube-api-server {api_server!r} must be an http(s):// URL")
        return KubeConfig(server=api_server.rstrip("/"), source="--kube-api-server")
    if kubeconfig:
        return from_kubeconfig(Path(kubeconfig))
    for name in (env.get("KUBECONFIG") or "").split(os.pathsep):
        if name and Path(name).exists():
            return from_kubeconfig(Path(name))
    found = in_cluster(env, sa_dir)
    if found is not None:
        return found
    home = Path(env.get("HOME", "~")).expanduser() / ".kube" / "config"
    if home.exists():
        return from_kubeconfig(home)
    raise ValueError(
        "no Kubernetes API server: not in a cluster (KUBERNETES_SERVICE_HOST and a service "
        "account token), no KUBECONFIG or ~/.kube/config; or give --kube-api-server URL"
    )
