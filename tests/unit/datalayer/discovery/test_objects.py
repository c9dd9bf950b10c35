"""Label selectors, what is kept of pods and pools, and where the API server is."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from bench.stack.kubeobjects import pod_object, pool_object
from picker.datalayer.discovery import kubeconfig
from picker.datalayer.discovery.objects import InvalidObject, pod_info, pool_spec
from picker.datalayer.discovery.selector import parse


@pytest.mark.parametrize(
    ("text", "labels", "match"),
    [
        ("app=vllm", {"app": "vllm"}, True),
        ("app==vllm", {"app": "vllm", "x": "y"}, True),
        ("app=vllm", {"app": "sglang"}, False),
        ("app=vllm", {}, False),
        ("app!=vllm", {}, True),  # absent label matches != (as in Kubernetes)
        ("app!=vllm", {"app": "vllm"}, False),
        ("env in (prod, staging)", {"env": "staging"}, True),
        ("env in (prod,staging)", {}, False),
        ("env notin (prod)", {}, True),
        ("env notin (prod)", {"env": "prod"}, False),
        ("gpu", {"gpu": ""}, True),
        ("!gpu", {"gpu": "a100"}, False),
        ("!gpu", {}, True),
        ("app=vllm,env in (a,b),!canary", {"app": "vllm", "env": "b"}, True),
        ("app=vllm,env in (a,b),!canary", {"app": "vllm", "env": "b", "canary": "1"}, False),
        ("example.com/role=server", {"example.com/role": "server"}, True),
    ],
)
def test_selector_matches(text: str, labels: dict[str, str], match: bool) -> None:
    assert parse(text).matches(labels) is match


def test_selector_canonical_form_round_trips() -> None:
    s = parse(" app == vllm , env in (b, a) ,!canary, gpu ")
    assert str(s) == "app=vllm,env in (a,b),!canary,gpu"
    assert parse(str(s)) == s


@pytest.mark.parametrize(
    "bad", ["app=vllm,", "env in (a", "env in ()", "app=bad value", "-app=x", "a b", "x in ((a))"]
)
def test_selector_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="label selector"):
        parse(bad)


def test_pod_endpoints() -> None:
    p = pod_info(pod_object("ns", "a", "10.0.0.1", {"app": "x"}))
    assert p.endpoints((8000, 8001)) == ("10.0.0.1:8000", "10.0.0.1:8001")
    raw = pod_object("ns", "a", "10.0.0.1", {}, ready=False)
    assert pod_info(raw).endpoints((8000,)) == ()
    raw = pod_object("ns", "a", "10.0.0.1", {})
    raw["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert pod_info(raw).endpoints((8000,)) == ()
    raw = pod_object("ns", "a", "", {})  # scheduled, no IP yet
    assert pod_info(raw).endpoints((8000,)) == ()
    raw = pod_object("ns", "a", "10.0.0.1", {})
    raw["status"]["conditions"] = [c for c in raw["status"]["conditions"] if c["type"] != "Ready"]
    assert pod_info(raw).endpoints((8000,)) == ()  # no Ready condition: not ready
    ann = {"llm-d.ai/active-ports": "8001,junk,70000"}
    raw = pod_object("ns", "a", "fd00::1", {}, annotations=ann)
    assert pod_info(raw).endpoints((8000, 8001)) == ("[fd00::1]:8001",)


def test_pool_spec_v1_and_v1alpha2() -> None:
    spec = pool_spec(pool_object("ns", "p", {"app": "vllm"}, (8000, 8001, 8000)))
    assert str(spec.selector) == "app=vllm" and spec.target_ports == (8000, 8001)
    old = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferencePool",
        "metadata": {"name": "p"},
        "spec": {"selector": {"app": "vllm"}, "targetPortNumber": 8000},
    }
    spec = pool_spec(old)
    assert str(spec.selector) == "app=vllm" and spec.target_ports == (8000,)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.pop("targetPorts"),
        lambda s: s.update(targetPorts=[]),
        lambda s: s.update(targetPorts=[{"number": 0}]),
        lambda s: s.update(targetPorts=[{"number": p} for p in range(8000, 8009)]),
        lambda s: s.update(selector={"matchLabels": {}}),
        lambda s: s.update(selector={"matchLabels": {"app": "bad value"}}),
    ],
)
def test_pool_spec_invalid(change: object) -> None:
    obj = pool_object("ns", "p", {"app": "vllm"})
    change(obj["spec"])  # type: ignore[operator]
    with pytest.raises(InvalidObject):
        pool_spec(obj)


def test_kubeconfig_order(tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok\n")
    (sa / "namespace").write_text("llm\n")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    c = kubeconfig.resolve(env=env, sa_dir=sa)
    assert c.server == "https://[fd00::1]:443" and c.token_file == str(sa / "token")
    assert c.namespace == "llm"
    c = kubeconfig.resolve("http://127.0.0.1:8001/", env=env, sa_dir=sa)
    assert c.server == "http://127.0.0.1:8001" and c.token is None
    kc = tmp_path / "config"
    kc.write_text(
        f"""
apiVersion: v1
kind: Config
current-context: dev
contexts:
- name: dev
  context: {{cluster: c1, user: u1, namespace: team}}
clusters:
- name: c1
  cluster:
    server: https://10.1.2.3:6443
    certificate-authority-data: {base64.b64encode(b"CA PEM").decode()}
users:
- name: u1
  user: {{token: abc}}
"""
    )
    c = kubeconfig.resolve(env={**env, "KUBECONFIG": f"{tmp_path}/missing:{kc}"}, sa_dir=sa)
    assert c.server == "https://10.1.2.3:6443" and c.token == "abc" and c.namespace == "team"
    assert c.ca_file is not None and Path(c.ca_file).read_bytes() == b"CA PEM"
    kc.write_text(kc.read_text().replace("{token: abc}", "{exec: {command: gcloud}}"))
    with pytest.raises(ValueError, match="exec"):
        kubeconfig.resolve(kubeconfig=str(kc), env={}, sa_dir=sa)
    with pytest.raises(ValueError, match="no Kubernetes API server"):
        kubeconfig.resolve(env={"HOME": str(tmp_path)}, sa_dir=tmp_path / "none")
    with pytest.raises(ValueError, match="URL"):
        kubeconfig.resolve("127.0.0.1:8001", env={})
