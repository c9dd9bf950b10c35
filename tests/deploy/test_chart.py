"""picker's Helm chart (deploy/helm/picker): every manifest it renders is one a cluster would
accept (tests/deploy/kube.py: Kubernetes OpenAPI schemas, the vendored CRDs with their CEL
rules, apimachinery's name rules), and the objects fit together: the pool points at
picker's Service, probes hit the health port, the grace period covers the drain, RBAC is
read-only and namespaced, the route has its 300 s timeout."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import kube
from tests.deploy.kube import Obj

POOL = "vllm-llama3-8b"
NS = "llm"
MODEL_SERVERS = {"inferencePool": {"modelServers": {"matchLabels": {"app": POOL}}}}


def merged(*parts: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
        for k, v in src.items():
            if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = copy.deepcopy(v)

    for p in parts:
        merge(out, p)
    return out


EVERYTHING_ON = merged(
    MODEL_SERVERS,
    {
        "provider": {"name": "istio"},
        "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "tls": {"secretName": "picker-tls"},
        "flags": {"v": 2},
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        "podLabels": {"team": "inference"},
        "podAnnotations": {"example.com/owner": "ml-platform"},
        "imagePullSecrets": [{"name": "regcred"}],
        "priorityClassName": "high",
        "image": {"repository": "registry.example.com/picker", "tag": "0.1.0"},
        "httpRoute": {
            "gateway": {"namespace": "gateways", "sectionName": "http"},
            "hostnames": ["llm.example.com"],
        },
        "inferencePool": {
            "targetPorts": [{"number": 8000}, {"number": 8001}],
            "failureMode": "FailClose",
        },
        "inferenceObjectives": [
            {"name": "interactive", "priority": 10},
            {"name": "batch", "priority": -1},
            {"name": "unprioritised"},
        ],
        "inferenceModelRewrites": [
            {
                "name": "llama-canary",
                "rules": [
                    {
                        "matches": [{"model": {"value": "llama"}}],
                        "targets": [
                            {"modelRewrite": "meta-llama/Llama-3.1-8B-Instruct", "weight": 90},
                            {"modelRewrite": "meta-llama/Llama-3.1-8B-Instruct-v2", "weight": 10},
                        ],
                    }
                ],
            }
        ],
    },
)

# Value sets a cluster operator would plausibly install with; every one must render only
# manifests a cluster accepts.
CASES: dict[str, dict[str, Any]] = {
    "defaults": MODEL_SERVERS,
    "everything-on": EVERYTHING_ON,
    "plaintext": merged(MODEL_SERVERS, {"tls": {"secureServing": False}}),
    "kgateway": merged(MODEL_SERVERS, {"provider": {"name": "kgateway"}}),
    "envoy-gateway": merged(MODEL_SERVERS, {"provider": {"name": "envoy-gateway"}}),
    "sglang-h2c": merged(
        MODEL_SERVERS,
        {
            "inferencePool": {
                "modelServerType": "sglang",
                "appProtocol": "kubernetes.io/h2c",
                "targetPorts": [{"number": 30000}],
            }
        },
    ),
    "existing-pool-no-route": merged(
        MODEL_SERVERS, {"inferencePool": {"create": False}, "httpRoute": {"enabled": False}}
    ),
    "no-prestop-long-drain": merged(
        MODEL_SERVERS,
        {
            "preStopSleepSeconds": 0,
            "drainTimeoutSeconds": 120,
            "terminationGracePeriodSeconds": 130,
        },
    ),
    "peers": merged(
        MODEL_SERVERS,
        {
            "replicas": 3,
            "peers": {
                "enabled": True,
                "endpoints": [f"picker-{i}.picker.{NS}.svc:5570" for i in range(3)],
            },
        },
    ),
    "peers-discovered": merged(MODEL_SERVERS, {"replicas": 3, "peers": {"enabled": True}}),
    "custom-plugins": merged(
        MODEL_SERVERS,
        {
            "pluginsConfig": {
                "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
                "kind": "EndpointPickerConfig",
                "plugins": [{"type": "prefix-cache-scorer"}, {"type": "max-score-picker"}],
                "schedulingProfiles": [
                    {
                        "name": "default",
                        "plugins": [
                            {"pluginRef": "prefix-cache-scorer", "weight": 1},
                            {"pluginRef": "max-score-picker"},
                        ],
                    }
                ],
            }
        },
    ),
}


def render(values: Mapping[str, Any], **kw: Any) -> list[Obj]:
    return kube.render(values, release=kw.pop("release", POOL), namespace=NS, **kw)


def one(objs: list[Obj], kind: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(objs: list[Obj]) -> Obj:
    containers = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["picker"]
    c: Obj = containers[0]
    return c


def flag(args: list[str], name: str) -> str:
    """The value after a flag given as two arguments."""
    assert args.count(name) == 1, f"{name} appears {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


# ---------------------------------------------------------------------------------------
# Every manifest is one the API server accepts


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rendered_manifest_is_valid(case: str) -> None:
    objs = render(CASES[case])
    assert objs
    for obj in objs:
        assert kube.problems(obj) == [], f"{case}: {obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"].get("namespace") == NS


def test_the_cases_render_every_template() -> None:
    """Each template file yields at least one manifest in some case, so none escapes the
    validation above."""
    from helm_python import Chart

    produced: set[str] = set()
    with Chart.load(kube.CHART) as chart:
        for values in CASES.values():
            for path, text in chart.render(values, name=POOL, namespace=NS).items():
                if path.endswith(".yaml") and any(yaml.safe_load_all(text)):
                    produced.add(path.rsplit("/", 1)[-1])
    templates = {p.name for p in (kube.CHART / "templates").iterdir() if p.suffix == ".yaml"}
    assert templates <= produced, templates - produced


def test_everything_on_renders_each_kind() -> None:
    kinds = sorted(o["kind"] for o in render(EVERYTHING_ON))
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "DestinationRule",
            "HTTPRoute",
            "InferenceModelRewrite",
            "InferenceObjective",
            "InferenceObjective",
            "InferenceObjective",
            "InferencePool",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )


def test_plain_manifests_are_valid() -> None:
    """The gateway manifests and the static (non-discovery) example apply as they are."""
    paths = [*sorted(kube.GATEWAYS_DIR.glob("*.yaml")), kube.ROOT / "deploy/kubernetes/picker.yaml"]
    objs = kube.load_files(*paths)
    assert {o["kind"] for o in objs} >= {"Gateway", "GatewayClass", "InferencePool", "HTTPRoute"}
    for obj in objs:
        assert kube.problems(obj) == [], f"{obj['kind']}/{obj['metadata']['name']}"


def test_vendored_crds_are_valid_crds_with_their_origin() -> None:
    """The vendored CRDs are CustomResourceDefinitions a cluster accepts, each named in
    deploy/crds/README.md with its source."""
    readme = (kube.CRD_DIR / "README.md").read_text()
    files = sorted(kube.CRD_DIR.rglob("*.yaml"))
    assert len(files) == 8
    for path in files:
        assert path.name in readme, f"{path.name} is not in deploy/crds/README.md"
        (crd,) = kube.load_files(path)
        assert crd["kind"] == "CustomResourceDefinition"
        assert kube.problems(crd) == [], path.name
    kinds = {(v.group, v.version, v.kind) for v in kube.crd_index().values()}
    assert {
        ("inference.networking.k8s.io", "v1", "InferencePool"),
        ("inference.networking.x-k8s.io", "v1alpha2", "InferenceObjective"),
        ("inference.networking.x-k8s.io", "v1alpha2", "InferenceModelRewrite"),
        ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        ("gateway.networking.k8s.io", "v1", "Gateway"),
        ("gateway.networking.k8s.io", "v1", "GatewayClass"),
        ("monitoring.coreos.com", "v1", "ServiceMonitor"),
        ("networking.istio.io", "v1", "DestinationRule"),
    } <= kinds


def test_helm_lint_is_clean() -> None:
    from helm_python import lint

    for name, values in CASES.items():
        report = lint(kube.CHART, values, strict=True, namespace=NS, kube_version="v1.30.0")
        assert report["errors"] == [], name
        # severity 2 = warning, 3 = error; 1 (info) is "icon is recommended"
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], name


# ---------------------------------------------------------------------------------------
# The validator rejects broken manifests (it can fail)


def _set(path: str, value: Any) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _drop(path: str) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        del node[last]

    return mutate


C0 = "spec.template.spec.containers.0"
BROKEN: dict[str, tuple[str, Callable[[Obj], None], str]] = {
    # built-in kinds: Kubernetes OpenAPI
    "container port not an int": (
        "Deployment",
        _set(f"{C0}.ports.0.containerPort", "grpc"),
        "is not of type 'integer'",
    ),
    "grpc probe by port name": (
        "Deployment",
        _set(f"{C0}.readinessProbe.grpc.port", "grpc-health"),
        "is not of type 'integer'",
    ),
    "misspelt field": (
        "Deployment",
        _set(f"{C0}.livenessprobe", {}),
        "'livenessprobe' was unexpected",
    ),
    "missing selector": ("Deployment", _drop("spec.selector"), "'selector' is a required property"),
    "role verb typo": ("Role", _set("rules.0.verb", ["get"]), "'verb' was unexpected"),
    "port name too long": (
        "Deployment",
        _set(f"{C0}.ports.1.name", "grpc-health-check"),
        "IANA_SVC_NAME",
    ),
    "mount without volume": (
        "Deployment",
        _set(f"{C0}.volumeMounts.0.name", "nope"),
        "has no volume",
    ),
    "service port out of range": ("Service", _set("spec.ports.0.port", 70000), "not in 1-65535"),
    "service name not DNS-1035": ("Service", _set("metadata.name", "9-picker"), "DNS-1035"),
    "label value too long": ("ConfigMap", _set("metadata.labels.x", "a" * 64), "label value"),
    # custom resources: the vendored CRDs
    "pool: unknown field": ("InferencePool", _set("spec.bogus", 1), "'bogus' was unexpected"),
    "pool: bad failure mode": (
        "InferencePool",
        _set("spec.endpointPickerRef.failureMode", "Sometimes"),
        "is not one of",
    ),
    "pool: no selector": (
        "InferencePool",
        _drop("spec.selector"),
        "'selector' is a required property",
    ),
    "pool: duplicate ports (CEL)": (
        "InferencePool",
        _set("spec.targetPorts", [{"number": 8000}, {"number": 8000}]),
        "port number must be unique",
    ),
    "pool: service ref without port (CEL)": (
        "InferencePool",
        _drop("spec.endpointPickerRef.port"),
        "port is required",
    ),
    "pool: port out of range": (
        "InferencePool",
        _set("spec.targetPorts.0.number", 0),
        "less than the minimum",
    ),
    "route: bad duration": (
        "HTTPRoute",
        _set("spec.rules.0.timeouts.request", "5 minutes"),
        "does not match",
    ),
    "route: backend timeout > request (CEL)": (
        "HTTPRoute",
        _set("spec.rules.0.timeouts", {"request": "10s", "backendRequest": "20s"}),
        "backendRequest timeout cannot be longer",
    ),
    "route: relative path (CEL)": (
        "HTTPRoute",
        _set("spec.rules.0.matches.0.path.value", "v1"),
        "must be an absolute path",
    ),
    "objective: priority not int": (
        "InferenceObjective",
        _set("spec.priority", "high"),
        "is not of type 'integer'",
    ),
    "rewrite: weight zero": (
        "InferenceModelRewrite",
        _set("spec.rules.0.targets.0.weight", 0),
        "less than the minimum",
    ),
    "monitor: unknown field": (
        "ServiceMonitor",
        _set("spec.endpoints.0.portName", "x"),
        "'portName' was unexpected",
    ),
    "istio: bad tls mode": (
        "DestinationRule",
        _set("spec.trafficPolicy.tls.mode", "SIMPLER"),
        "is not one of",
    ),
    "namespace on a CR is bad": (
        "InferencePool",
        _set("metadata.namespace", "Not_A_Label"),
        "DNS-1123 label",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validator_rejects_broken_manifest(case: str) -> None:
    kind, mutate, expected = BROKEN[case]
    obj = copy.deepcopy(next(o for o in render(EVERYTHING_ON) if o["kind"] == kind))
    assert kube.problems(obj) == []
    mutate(obj)
    found = kube.problems(obj)
    assert found, f"{case}: the validator accepted a broken {kind}"
    assert any(expected in p for p in found), found
    with pytest.raises(kube.ManifestError):
        kube.validate(obj)


def test_validator_rejects_unknown_kinds() -> None:
    found = kube.problems(
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    )
    assert found and "no schema" in found[0]


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "no model servers": ({}, "matchLabels is required"),
    "selects picker itself": (
        {"inferencePool": {"modelServers": {"matchLabels": {"app.kubernetes.io/name": "picker"}}}},
        "selects picker's own pods",
    ),
    "unknown provider": (merged(MODEL_SERVERS, {"provider": {"name": "nginx"}}), "/provider/name"),
    "misspelt key": (merged(MODEL_SERVERS, {"inferencepool": {}}), "inferencepool"),
    "bad route timeout": (
        merged(MODEL_SERVERS, {"httpRoute": {"requestTimeout": "5min"}}),
        "requestTimeout",
    ),
    "grace period under the drain": (
        merged(MODEL_SERVERS, {"drainTimeoutSeconds": 60, "terminationGracePeriodSeconds": 30}),
        "must exceed",
    ),
    "bad failure mode": (
        merged(MODEL_SERVERS, {"inferencePool": {"failureMode": "Open"}}),
        "failureMode",
    ),
    "bad model server": (
        merged(MODEL_SERVERS, {"inferencePool": {"modelServerType": "tgi"}}),
        "modelServerType",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_fail_to_render(case: str) -> None:
    from helm_python import HelmError

    values, expected = BAD_VALUES[case]
    with pytest.raises(HelmError, match=expected):
        render(values)


# ---------------------------------------------------------------------------------------
# The objects fit together


def test_pool_points_at_picker_service_and_selects_model_servers() -> None:
    objs = render(EVERYTHING_ON)
    pool, svc, dep = one(objs, "InferencePool"), one(objs, "Service"), one(objs, "Deployment")
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["name"] == svc["metadata"]["name"] == f"{POOL}-picker"
    assert ref.get("kind", "Service") == "Service" and ref["failureMode"] == "FailClose"
    (ext_proc,) = [p for p in svc["spec"]["ports"] if p["port"] == ref["port"]["number"]]
    assert ext_proc["port"] == 9002
    assert pool["metadata"]["name"] == POOL
    assert pool["spec"]["selector"]["matchLabels"] == {"app": POOL}
    assert pool["spec"]["targetPorts"] == [{"number": 8000}, {"number": 8001}]
    # the Service selects picker's pods, and the pool's selector does not
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert not pool["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_service_ports_reach_the_container() -> None:
    objs = render(CASES["defaults"])
    svc, c = one(objs, "Service"), container(objs)
    container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert container_ports == {"grpc": 9002, "grpc-health": 9003, "metrics": 9090}
    by_name = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(by_name) == {"grpc-ext-proc", "grpc-health", "http-metrics"}
    for port in by_name.values():
        assert container_ports[port["targetPort"]] == port["port"]
    assert by_name["grpc-ext-proc"]["appProtocol"] == "kubernetes.io/h2c"
    assert by_name["http-metrics"]["appProtocol"] == "http"


def test_args_are_the_endpoint_pickers_flags() -> None:
    c = container(render(CASES["defaults"]))
    assert c["command"] == ["picker", "serve"]
    args = c["args"]
    assert flag(args, "--pool-name") == POOL
    assert flag(args, "--pool-namespace") == NS
    assert flag(args, "--pool-group") == "inference.networking.k8s.io"
    assert flag(args, "--grpc-port") == "9002"
    assert flag(args, "--grpc-health-port") == "9003"
    assert flag(args, "--metrics-port") == "9090"
    assert flag(args, "--drain-timeout") == "30"
    assert "--secure-serving" in args and "--cert-path" not in args
    assert flag(args, "--config-file") == "/etc/picker/config/endpoint-picker.yaml"
    assert {e["name"] for e in c["env"]} >= {"NAMESPACE", "POD_NAME"}

    plain = container(render(CASES["plaintext"]))["args"]
    assert "--secure-serving=false" in plain and "--secure-serving" not in plain
    extra = container(render(EVERYTHING_ON))["args"]
    assert "--v=2" in extra


def test_config_file_is_the_mounted_configmap() -> None:
    objs = render(CASES["defaults"])
    c, cm = container(objs), one(objs, "ConfigMap")
    path = flag(c["args"], "--config-file")
    directory, _, filename = path.rpartition("/")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == directory]
    volumes = one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    config = yaml.safe_load(cm["data"][filename])
    assert config["kind"] == "EndpointPickerConfig"
    plugins = {p.get("name", p["type"]) for p in config["plugins"]}
    (profile,) = config["schedulingProfiles"]
    assert {p["pluginRef"] for p in profile["plugins"]} <= plugins
    assert {"queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"} <= plugins
    # the pods roll when the config changes
    annotations = one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    custom = one(render(CASES["custom-plugins"]), "Deployment")["spec"]["template"]["metadata"]
    assert custom["annotations"]["checksum/config"] != annotations["checksum/config"]


def test_model_server_type_reaches_the_metrics_extractor() -> None:
    cm = one(render(CASES["sglang-h2c"]), "ConfigMap")
    config = yaml.safe_load(cm["data"]["endpoint-picker.yaml"])
    (extractor,) = [p for p in config["plugins"] if p["type"] == "core-metrics-extractor"]
    assert extractor["parameters"] == {"defaultEngine": "sglang"}
    pool = one(render(CASES["sglang-h2c"]), "InferencePool")
    assert pool["spec"]["appProtocol"] == "kubernetes.io/h2c"


def test_probes_use_the_grpc_health_port() -> None:
    c = container(render(CASES["defaults"]))
    assert c["livenessProbe"]["grpc"] == {"port": 9003, "service": "liveness"}
    assert c["readinessProbe"]["grpc"] == {"port": 9003, "service": "readiness"}
    # readiness is fast (the pool's first sync gates it), liveness is lenient
    assert c["readinessProbe"]["periodSeconds"] <= 2
    liveness = c["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30


@pytest.mark.parametrize("case", ["defaults", "no-prestop-long-drain", "everything-on"])
def test_grace_period_covers_prestop_and_drain(case: str) -> None:
    values = CASES[case]
    objs = render(values)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    c = container(objs)
    drain = int(flag(c["args"], "--drain-timeout"))
    prestop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert drain == values.get("drainTimeoutSeconds", 30)
    assert prestop == values.get("preStopSleepSeconds", 5)
    assert pod["terminationGracePeriodSeconds"] > prestop + drain
    if case == "defaults":
        assert pod["terminationGracePeriodSeconds"] == 5 + 30 + 15


def test_rolling_update_keeps_a_picker_ready() -> None:
    dep = one(render(CASES["defaults"]), "Deployment")
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_rbac_is_read_only_and_namespaced() -> None:
    objs = render(EVERYTHING_ON)
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role, binding = one(objs, "Role"), one(objs, "RoleBinding")
    grants = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    expected = {
        (group, resource, verb)
        for group, resource in [
            ("", "pods"),
            ("inference.networking.k8s.io", "inferencepools"),
            ("inference.networking.x-k8s.io", "inferenceobjectives"),
            ("inference.networking.x-k8s.io", "inferencemodelrewrites"),
        ]
        for verb in ("get", "list", "watch")
    }
    assert grants == expected
    assert all("resourceNames" not in r and "nonResourceURLs" not in r for r in role["rules"])
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    sa = one(objs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NS}
    ]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_route_sends_everything_to_the_pool_with_a_300s_timeout() -> None:
    objs = render(CASES["defaults"])
    route = one(objs, "HTTPRoute")
    (rule,) = route["spec"]["rules"]
    assert rule["timeouts"] == {"request": "300s"}
    assert rule["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": POOL}
    ]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    (parent,) = route["spec"]["parentRefs"]
    # the Gateway each deploy/kubernetes/gateways file creates
    gateways = [
        o for o in kube.load_files(*kube.GATEWAYS_DIR.glob("*.yaml")) if o["kind"] == "Gateway"
    ]
    assert len(gateways) == 3
    assert {g["metadata"]["name"] for g in gateways} == {parent["name"]}
    assert "namespace" not in parent  # same namespace as the Gateway files applied there
    classes = {g["spec"]["gatewayClassName"] for g in gateways}
    assert classes == {"envoy-gateway", "agentgateway", "istio"}


def test_service_monitor_scrapes_the_metrics_port() -> None:
    objs = render(EVERYTHING_ON)
    monitor, svc = one(objs, "ServiceMonitor"), one(objs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NS]}
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = [p for p in svc["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["port"] == 9090 and endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert not [o for o in render(CASES["defaults"]) if o["kind"] == "ServiceMonitor"]


def test_istio_dials_picker_with_tls() -> None:
    objs = render(EVERYTHING_ON)
    dr, svc = one(objs, "DestinationRule"), one(objs, "Service")
    assert dr["spec"]["host"] == f"{svc['metadata']['name']}.{NS}.svc.cluster.local"
    assert dr["spec"]["trafficPolicy"]["tls"] == {"mode": "SIMPLE", "insecureSkipVerify": True}
    for case in ("defaults", "kgateway", "envoy-gateway"):
        assert not [o for o in render(CASES[case]) if o["kind"] == "DestinationRule"]


def test_mounted_certificate_is_the_cert_path() -> None:
    objs = render(EVERYTHING_ON)
    c = container(objs)
    cert_path = flag(c["args"], "--cert-path")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == cert_path]
    assert mount["readOnly"] is True
    volumes = one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "picker-tls"


def test_hardened_pod() -> None:
    objs = render(CASES["defaults"])
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    c = container(objs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # the self-signed certificate is written under /tmp: it must be writable
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])


def test_objectives_and_rewrites_name_the_pool() -> None:
    objs = render(EVERYTHING_ON)
    for o in objs:
        if o["kind"] in ("InferenceObjective", "InferenceModelRewrite"):
            assert o["spec"]["poolRef"] == {
                "group": "inference.networking.k8s.io",
                "kind": "InferencePool",
                "name": POOL,
            }
    priorities = {
        o["metadata"]["name"]: o["spec"].get("priority")
        for o in objs
        if o["kind"] == "InferenceObjective"
    }
    assert priorities == {"interactive": 10, "batch": -1, "unprioritised": None}


def test_long_release_names_stay_valid() -> None:
    name = "a" * 53  # Helm's longest release name
    for obj in render(MODEL_SERVERS, release=name):
        assert kube.problems(obj) == [], obj["kind"]


# ---------------------------------------------------------------------------------------
# picker's command line accepts the chart's arguments


@pytest.mark.parametrize("case", ["defaults", "plaintext", "everything-on"])
def test_picker_cli_takes_the_chart_args(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """picker's own parser reads the Deployment's whole command line into the config the
    chart means: the pool, its namespace, the ports, TLS, the drain and the mounted
    EndpointPickerConfig (written where the test can read it)."""
    from picker.cli import _parser, config_from_args

    objs = render(CASES[case])
    c, cm = container(objs), one(objs, "ConfigMap")
    assert c["command"][0] == "picker"
    argv = [*c["command"][1:], *c["args"]]
    mounted = flag(argv, "--config-file")
    local = tmp_path / mounted.rpartition("/")[2]
    local.write_text(cm["data"][local.name])
    argv[argv.index(mounted)] = str(local)
    try:
        cfg = config_from_args(_parser().parse_args(argv))
    except SystemExit:
        pytest.fail(f"picker {' '.join(argv)}\n{capsys.readouterr().err}")
    assert (cfg.discovery.pool_name, cfg.discovery.pool_namespace) == (POOL, NS)
    assert cfg.discovery.pool_group == "inference.networking.k8s.io"
    assert (cfg.grpc_port, cfg.metrics_port) == (9002, 9090)
    assert cfg.tls.enabled is (case != "plaintext")
    assert cfg.tls.cert_path == ("/etc/picker/tls" if case == "everything-on" else None)
    assert cfg.drain_timeout == 30
    assert cfg.grpc_health_port == 9003
    # the ConfigMap's EndpointPickerConfig is read from the mounted path, as the chart's
    # default plugins with their weights
    assert cfg.scheduler is not None
    assert cfg.scheduler["scorers"] == {
        "queue-scorer": 2.0,
        "kv-cache-utilization-scorer": 2.0,
        "prefix-cache-scorer": 3.0,
    }


@pytest.mark.parametrize("case", ["sglang-h2c", "custom-plugins"])
def test_picker_reads_the_rendered_endpoint_picker_config(case: str) -> None:
    """The ConfigMap's EndpointPickerConfig, as rendered, is one picker can run."""
    from picker.eppconfig import load_text
    from picker.scheduling.profile import build_profile

    cm = one(render(CASES[case]), "ConfigMap")
    settings = load_text(cm["data"]["endpoint-picker.yaml"], case)
    build_profile(settings.scheduler)
    if case == "sglang-h2c":
        assert settings.model_server == "sglang"


@pytest.mark.parametrize("case", ["peers", "peers-discovered"])
def test_peers_render_into_pickers_own_config(tmp_path: Path, case: str) -> None:
    """With peers on, the replicas' own config file is mounted and read by picker's CLI
    as the chart means it: publish on the peers port, subscribe to every replica (listed,
    or found as the pods the Deployment makes)."""
    from picker.cli import _parser, config_from_args
    from picker.datalayer.discovery.selector import parse

    objs = render(CASES[case])
    c, cm = container(objs), one(objs, "ConfigMap")
    assert {"name": "peers", "containerPort": 5570, "protocol": "TCP"} in c["ports"]
    argv = [*c["command"][1:], *c["args"]]
    for name in ("--config", "--config-file"):
        mounted = flag(argv, name)
        local = tmp_path / mounted.rpartition("/")[2]
        local.write_text(cm["data"][local.name])
        argv[argv.index(mounted)] = str(local)
    cfg = config_from_args(_parser().parse_args(argv))
    assert cfg.peers.publish == "tcp://0.0.0.0:5570"
    if case == "peers":
        assert cfg.peers.endpoints == [f"tcp://picker-{i}.picker.{NS}.svc:5570" for i in range(3)]
        assert not cfg.peers.selector
    else:
        assert cfg.peers.endpoints == [] and cfg.discovery.enabled
        template = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert parse(cfg.peers.selector).matches(template)
        pool = one(objs, "InferencePool")["spec"]["selector"]["matchLabels"]
        assert not parse(cfg.peers.selector).matches(pool)  # the model servers are not peers
    off = render(CASES["defaults"])
    assert "picker.yaml" not in one(off, "ConfigMap")["data"]
    assert "--config" not in container(off)["args"]
