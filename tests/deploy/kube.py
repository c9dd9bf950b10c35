"""Offline validation of Kubernetes manifests, as an API server would judge them on create.

No cluster is involved. Each object is checked against:

* built-in kinds (Deployment, Service, Role, ...): the Kubernetes OpenAPI schemas as JSON
  schemas, bundled by the ``kubernetes-validate`` package, in its strict form (an unknown
  field is an error, as with ``kubectl apply``'s default strict field validation), for the
  oldest and the newest Kubernetes version the chart supports;
* custom resources (InferencePool, HTTPRoute, ServiceMonitor, ...): the real CRDs vendored
  under ``deploy/crds/`` (see its README for their origin). Their structural schema is
  applied the way the API server does: defaults first, then types, formats, enums, patterns
  and bounds, unknown fields rejected (pruning would drop them silently; strict field
  validation rejects them), ``x-kubernetes-list-type`` uniqueness, and every
  ``x-kubernetes-validations`` CEL rule evaluated with ``cel-python`` (transition rules,
  which need ``oldSelf``, do not apply to a create and are skipped);
* every object: the API server's rules for names, namespaces, label and annotation keys
  and values (apimachinery's validation), which no schema carries.

``render`` renders the Helm chart with Helm's own engine (Helm's Go SDK through the
``helm-python-sdk`` package), so the chart is tested as ``helm install`` would render it.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import celpy.celtypes
import jsonschema
import yaml
from celpy.adapter import json_to_cel

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/picker"
CRD_DIR = ROOT / "deploy/crds"
GATEWAYS_DIR = ROOT / "deploy/kubernetes/gateways"

# The Kubernetes versions built-in kinds are checked against: the chart's minimum
# (Chart.yaml kubeVersion) and the newest the bundled schemas know.
KUBE_VERSIONS = ("1.30", "1.37")

Obj = dict[str, Any]


class ManifestError(Exception):
    """One or more reasons an API server would reject the object."""

    def __init__(self, obj: Mapping[str, Any], problems: list[str]) -> None:
        self.problems = problems
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        what = f"{obj.get('kind')}/{meta.get('name') if meta else None}"
        super().__init__(f"{what}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------
# Rendering


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "vllm-llama3-8b",
    namespace: str = "llm",
) -> list[Obj]:
    """The chart's manifests for these values, as ``helm template`` would print them."""
    from helm_python import Chart

    with Chart.load(CHART) as chart:
        rendered = chart.render(dict(values or {}), name=release, namespace=namespace)
    objs: list[Obj] = []
    for path in sorted(rendered):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                objs.append(doc)
    return objs


def load_files(*paths: Path) -> list[Obj]:
    """The objects in plain manifest files."""
    objs: list[Obj] = []
    for path in paths:
        objs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return objs


# ---------------------------------------------------------------------------------------
# Metadata: apimachinery's rules (k8s.io/apimachinery/pkg/util/validation)

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

# Kinds whose names are DNS-1035 labels, or path segments; every other kind's name is a
# DNS-1123 subdomain.
_DNS1035_NAMED = {("", "Service")}
_PATH_SEGMENT_NAMED = {
    ("rbac.authorization.k8s.io", "Role"),
    ("rbac.authorization.k8s.io", "RoleBinding"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
}
_CLUSTER_SCOPED_BUILTIN = {
    ("", "Namespace"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
}


def group_version(obj: Mapping[str, Any]) -> tuple[str, str]:
    api_version = str(obj.get("apiVersion", ""))
    group, _, version = api_version.rpartition("/")
    return group, version


def _qualified_key_problems(key: str, what: str) -> list[str]:
    prefix, slash, name = key.rpartition("/")
    problems = []
    if slash and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        problems.append(f"{what} key {key!r}: prefix is not a DNS subdomain")
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        problems.append(f"{what} key {key!r}: name part is not a qualified name (63 max)")
    return problems


def metadata_problems(obj: Mapping[str, Any], *, namespaced: bool) -> list[str]:
    """What the API server's ObjectMeta validation would reject."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return ["metadata is missing"]
    problems: list[str] = []
    group, _ = group_version(obj)
    kind = str(obj.get("kind"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        problems.append("metadata.name is missing")
    elif (group, kind) in _DNS1035_NAMED:
        if len(name) > 63 or not _DNS1035_LABEL.match(name):
            problems.append(f"metadata.name {name!r} is not a DNS-1035 label")
    elif (group, kind) in _PATH_SEGMENT_NAMED:
        if name in (".", "..") or "/" in name or "%" in name:
            problems.append(f"metadata.name {name!r} is not a valid path segment")
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        problems.append(f"metadata.name {name!r} is not a DNS-1123 subdomain")
    ns = meta.get("namespace")
    if ns is not None:
        if not namespaced:
            problems.append(f"metadata.namespace is set on cluster-scoped {kind}")
        elif not isinstance(ns, str) or len(ns) > 63 or not _DNS1123_LABEL.match(ns):
            problems.append(f"metadata.namespace {ns!r} is not a DNS-1123 label")
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping):
        problems.append("metadata.labels is not a map")
    else:
        for key, value in labels.items():
            problems += _qualified_key_problems(str(key), "label")
            if not isinstance(value, str):
                problems.append(f"label {key!r}: value {value!r} is not a string")
            elif len(value) > 63 or not _LABEL_VALUE.match(value):
                problems.append(f"label {key!r}: value {value!r} is not a valid label value")
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        problems.append("metadata.annotations is not a map")
    else:
        size = 0
        for key, value in annotations.items():
            problems += _qualified_key_problems(str(key), "annotation")
            if not isinstance(value, str):
                problems.append(f"annotation {key!r}: value {value!r} is not a string")
            else:
                size += len(str(key)) + len(value)
        if size > 256 * 1024:
            problems.append("annotations exceed 256 KiB")
    return problems


def pod_spec_problems(spec: Mapping[str, Any]) -> list[str]:
    """Pod-spec rules the API server enforces beyond the schema (names and references)."""
    problems: list[str] = []
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for c in containers:
        cname = c.get("name", "")
        if len(cname) > 63 or not _DNS1123_LABEL.match(cname):
            problems.append(f"container name {cname!r} is not a DNS-1123 label")
        port_names = set()
        for p in c.get("ports") or []:
            if not _port_ok(p.get("containerPort")):
                problems.append(f"container {cname}: containerPort {p.get('containerPort')!r}")
            pname = p.get("name")
            if pname is None:
                continue
            if pname in port_names:
                problems.append(f"container {cname}: duplicate port name {pname!r}")
            port_names.add(pname)
            if (
                len(pname) > 15
                or not _IANA_SVC_NAME.match(pname)
                or "--" in pname
                or not re.search("[a-z]", pname)
            ):
                problems.append(f"container {cname}: port name {pname!r} is not an IANA_SVC_NAME")
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                problems.append(f"container {cname}: volumeMount {m.get('name')!r} has no volume")
        for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = c.get(probe_name) or {}
            handlers = [h for h in ("exec", "httpGet", "tcpSocket", "grpc") if h in probe]
            if probe and len(handlers) != 1:
                problems.append(f"container {cname}: {probe_name} needs exactly one handler")
            for h in ("httpGet", "tcpSocket"):
                port = (probe.get(h) or {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    problems.append(f"container {cname}: {probe_name} names unknown port {port!r}")
    return problems


def _port_ok(port: object) -> bool:
    return isinstance(port, int) and 1 <= port <= 65535


def service_problems(spec: Mapping[str, Any]) -> list[str]:
    """Service rules the API server enforces beyond the schema (ports and their names)."""
    problems: list[str] = []
    ports = spec.get("ports") or []
    names = [p.get("name") for p in ports]
    if len(ports) > 1 and not all(names):
        problems.append("every port of a multi-port Service needs a name")
    if len([n for n in names if n]) != len({n for n in names if n}):
        problems.append("duplicate Service port names")
    for p in ports:
        name = p.get("name")
        if name and (len(name) > 63 or not _DNS1123_LABEL.match(name)):
            problems.append(f"Service port name {name!r} is not a DNS-1123 label")
        if not _port_ok(p.get("port")):
            problems.append(f"Service port {p.get('port')!r} is not in 1-65535")
        target = p.get("targetPort")
        if isinstance(target, str):
            if len(target) > 15 or not _IANA_SVC_NAME.match(target):
                problems.append(f"targetPort {target!r} is not an IANA_SVC_NAME")
        elif target is not None and not _port_ok(target):
            problems.append(f"targetPort {target!r} is not in 1-65535")
    return problems


# ---------------------------------------------------------------------------------------
# Built-in kinds: kubernetes-validate's strict JSON schemas


def builtin_problems(obj: Mapping[str, Any]) -> list[str] | None:
    """Schema problems of a built-in kind, or None when no bundled schema knows the kind."""
    import kubernetes_validate  # type: ignore[import-untyped]
    from kubernetes_validate.utils import SchemaNotFoundError  # type: ignore[import-untyped]

    problems: list[str] = []
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(copy.deepcopy(dict(obj)), version, strict=True)
        except SchemaNotFoundError:
            return None
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(root)"
            problems.append(f"[k8s {version}] {where}: {e.message}")
    return problems


# ---------------------------------------------------------------------------------------
# Custom resources: the vendored CRDs


@dataclass(frozen=True)
class CRDVersion:
    crd: str  # the CRD's metadata.name
    group: str
    kind: str
    version: str
    namespaced: bool
    schema: Obj  # openAPIV3Schema


@functools.cache
def crd_index() -> dict[tuple[str, str, str], CRDVersion]:
    """(group, version, kind) → the vendored CRD's schema for that served version."""
    index: dict[tuple[str, str, str], CRDVersion] = {}
    for path in sorted(CRD_DIR.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for v in spec["versions"]:
                if not v.get("served", True):
                    continue
                key = (spec["group"], v["name"], spec["names"]["kind"])
                index[key] = CRDVersion(
                    crd=doc["metadata"]["name"],
                    group=spec["group"],
                    kind=spec["names"]["kind"],
                    version=v["name"],
                    namespaced=spec["scope"] == "Namespaced",
                    schema=v["schema"]["openAPIV3Schema"],
                )
    return index


_VALUE_KEYWORDS = (
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "multipleOf",
    "uniqueItems",
    "format",
)


def to_jsonschema(s: Mapping[str, Any], *, structural: bool = True) -> Obj:
    """A CRD's OpenAPI v3 structural schema as JSON Schema (draft 2020-12).

    ``structural``: this node declares fields, so an object without ``properties``,
    ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields`` admits no field
    at all; False inside ``allOf``/``anyOf``/``oneOf``/``not``, which only constrain values.
    """
    out: Obj = {k: s[k] for k in _VALUE_KEYWORDS if k in s}
    # OpenAPI 3.0's boolean exclusive bounds → JSON Schema's numeric ones.
    for excl, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if s.get(excl) is True and bound in s:
            out[excl] = out.pop(bound)
    if s.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    elif "type" in s:
        out["type"] = [s["type"], "null"] if s.get("nullable") else s["type"]
        if s.get("nullable") and "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in s:
        out["properties"] = {
            k: to_jsonschema(v, structural=structural) for k, v in s["properties"].items()
        }
    if isinstance(s.get("additionalProperties"), Mapping):
        out["additionalProperties"] = to_jsonschema(
            s["additionalProperties"], structural=structural
        )
    elif s.get("additionalProperties") is False:
        out["additionalProperties"] = False
    elif (
        structural
        and s.get("type") == "object"
        and not s.get("x-kubernetes-preserve-unknown-fields")
        and s.get("additionalProperties") is not True
    ):
        allowed = set(s.get("properties", {}))
        if s.get("x-kubernetes-embedded-resource"):
            allowed |= {"apiVersion", "kind", "metadata"}
        if allowed - set(s.get("properties", {})):
            out.setdefault("properties", {}).update({k: {} for k in allowed})
        out["additionalProperties"] = False
    if isinstance(s.get("items"), Mapping):
        out["items"] = to_jsonschema(s["items"], structural=structural)
    for key in ("allOf", "anyOf", "oneOf"):
        if key in s:
            out[key] = [to_jsonschema(x, structural=False) for x in s[key]]
    if "not" in s:
        out["not"] = to_jsonschema(s["not"], structural=False)
    return out


def apply_defaults(value: Any, s: Mapping[str, Any]) -> Any:
    """The object after the API server's structural defaulting (defaults fill absent fields)."""
    if isinstance(value, dict):
        for key, sub in (s.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
        extra = s.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key in list(value):
                if key not in (s.get("properties") or {}):
                    value[key] = apply_defaults(value[key], extra)
    elif isinstance(value, list) and isinstance(s.get("items"), Mapping):
        return [apply_defaults(v, s["items"]) for v in value]
    return value


def _kube_split(s: celpy.celtypes.StringType, sep: celpy.celtypes.StringType) -> Any:
    # Kubernetes' CEL strings extension: "a/b".split("/") == ["a", "b"].
    return celpy.celtypes.ListType([celpy.celtypes.StringType(p) for p in str(s).split(str(sep))])


# Kubernetes CEL library functions the vendored CRDs' rules use beyond standard CEL. A rule
# calling one not listed here fails to evaluate, and so fails validation.
_KUBE_CEL_FUNCTIONS: dict[str, Any] = {"split": _kube_split}


@functools.cache
def _cel_program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=_KUBE_CEL_FUNCTIONS)


@dataclass
class CELStats:
    evaluated: int = 0
    transition_skipped: int = 0


CEL_STATS = CELStats()


def _walk(value: Any, s: Mapping[str, Any], path: str) -> Iterator[str]:
    """List-type uniqueness and CEL rules, at every node present in the object."""
    for v in s.get("x-kubernetes-validations") or []:
        rule = v["rule"]
        if re.search(r"\boldSelf\b", rule):
            CEL_STATS.transition_skipped += 1
            continue
        CEL_STATS.evaluated += 1
        try:
            result = _cel_program(rule).evaluate({"self": json_to_cel(value)})
        except Exception as e:  # compile or evaluation error: the server would fail too
            yield f"{path}: CEL rule {rule!r} could not be evaluated: {e}"[:400]
            continue
        if not isinstance(result, celpy.celtypes.BoolType):
            yield f"{path}: CEL rule {rule!r} did not evaluate to a bool: {result!r}"[:400]
        elif not result:
            yield f"{path}: {v.get('message') or 'failed rule'} (CEL: {rule})"
    if isinstance(value, list):
        list_type = s.get("x-kubernetes-list-type")
        if list_type == "set":
            seen = [yaml.safe_dump(x, sort_keys=True) for x in value]
            if len(seen) != len(set(seen)):
                yield f"{path}: duplicate entries in a list of type set"
        elif list_type == "map":
            keys = s.get("x-kubernetes-list-map-keys") or []
            tuples = [tuple(str(x.get(k)) for k in keys) for x in value if isinstance(x, dict)]
            if len(tuples) != len(set(tuples)):
                yield f"{path}: duplicate keys {keys} in a list of type map"
        items = s.get("items")
        if isinstance(items, Mapping):
            for i, x in enumerate(value):
                yield from _walk(x, items, f"{path}[{i}]")
    elif isinstance(value, dict):
        props = s.get("properties") or {}
        for key, x in value.items():
            if key in props:
                yield from _walk(x, props[key], f"{path}.{key}")
            elif isinstance(s.get("additionalProperties"), Mapping):
                yield from _walk(x, s["additionalProperties"], f"{path}.{key}")


def custom_resource_problems(obj: Mapping[str, Any], crd: CRDVersion) -> list[str]:
    problems: list[str] = []
    schema = copy.deepcopy(crd.schema)
    # Every object has apiVersion, kind and metadata, whether or not the CRD lists them;
    # metadata is ObjectMeta, checked by metadata_problems (the CRD only says "object").
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    value = apply_defaults(copy.deepcopy(dict(obj)), schema)
    validator = jsonschema.Draft202012Validator(to_jsonschema(schema), format_checker=_FORMATS)
    for e in sorted(validator.iter_errors(value), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in e.path) or "(root)"
        problems.append(f"{where}: {e.message}"[:400])
    if not problems:  # CEL rules assume a value of the schema's shape
        problems += list(_walk(value, schema, "self"))
    return problems


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("int32")
def _int32(v: object) -> bool:
    return not isinstance(v, int) or -(2**31) <= v < 2**31


@_FORMATS.checks("int64")
def _int64(v: object) -> bool:
    return not isinstance(v, int) or -(2**63) <= v < 2**63


# ---------------------------------------------------------------------------------------


def problems(obj: Mapping[str, Any]) -> list[str]:
    """Every reason an API server would reject this object on create (empty: none)."""
    if not isinstance(obj.get("apiVersion"), str) or not isinstance(obj.get("kind"), str):
        return ["apiVersion and kind are required strings"]
    group, version = group_version(obj)
    kind = obj["kind"]
    crd = crd_index().get((group, version, kind))
    if crd is not None:
        found = custom_resource_problems(obj, crd)
        namespaced = crd.namespaced
    else:
        builtin = builtin_problems(obj)
        if builtin is None:
            return [f"no schema for {obj['apiVersion']} {kind}: not built in, no vendored CRD"]
        found = builtin
        namespaced = (group, kind) not in _CLUSTER_SCOPED_BUILTIN
    found += metadata_problems(obj, namespaced=namespaced)
    pod_spec = (
        (((obj.get("spec") or {}).get("template") or {}).get("spec"))
        if kind
        in (
            "Deployment",
            "StatefulSet",
            "DaemonSet",
            "Job",
        )
        else None
    )
    if isinstance(pod_spec, Mapping):
        found += pod_spec_problems(pod_spec)
    if (group, kind) == ("", "Service"):
        found += service_problems(obj.get("spec") or {})
    return found


def validate(obj: Mapping[str, Any]) -> None:
    """Raise ManifestError with every problem of the object, if it has any."""
    found = problems(obj)
    if found:
        raise ManifestError(obj, found)
