"""Kubernetes objects as the API server returns them, for the fake API server
(``bench.stack.fakekube``): a vLLM-like Pod and an InferencePool v1 (the CRD's shape in
kubernetes-sigs/gateway-api-inference-extension ``config/crd/bases``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from picker.datalayer.discovery.selector import Selector

POOL_GROUP = "inference.networking.k8s.io"


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def field_selector(text: str) -> dict[str, tuple[str, bool]]:
    """``metadata.name=x,metadata.namespace!=y`` → {field: (value, equal)}."""
    out: dict[str, tuple[str, bool]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        for op in ("!=", "==", "="):
            key, sep, value = part.partition(op)
            if sep:
                if key not in ("metadata.name", "metadata.namespace"):
                    raise ValueError(f'field label not supported: "{key}"')
                out[key] = (value, op != "!=")
                break
        else:
            raise ValueError(f"invalid field selector {part!r}")
    return out


def matches(obj: Mapping[str, Any], labels: Selector, fields: Mapping[str, Any]) -> bool:
    meta = obj["metadata"]
    for key, (value, equal) in fields.items():
        if (meta[key.split(".", 1)[1]] == value) != equal:
            return False
    return labels.matches(meta.get("labels") or {})


def pod_object(
    ns: str,
    name: str,
    ip: str,
    labels: Mapping[str, str],
    ready: bool = True,
    annotations: Mapping[str, str] | None = None,
    ports: tuple[int, ...] = (8000,),
    uid: int = 0,
) -> dict[str, Any]:
    """A Pod as the API server returns it (vLLM-like; ~3 KB of JSON, as real ones are)."""
    flag = "True" if ready else "False"
    t = "2026-01-01T00:00:00Z"
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "generateName": name.rsplit("-", 1)[0] + "-",
            "namespace": ns,
            "uid": f"00000000-0000-4000-8000-{uid:012d}",
            "resourceVersion": "",
            "creationTimestamp": t,
            "labels": dict(labels),
            "annotations": dict(annotations or {}),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": name.rsplit("-", 1)[0],
                    "uid": "00000000-0000-4000-8000-000000000000",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": t,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {"f:labels": {k: {} for k in labels}},
                        "f:spec": {"f:containers": {'k:{"name":"vllm"}': {}}},
                    },
                },
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": t,
                    "fieldsType": "FieldsV1",
                    "subresource": "status",
                    "fieldsV1": {"f:status": {"f:conditions": {}, "f:podIP": {}, "f:podIPs": {}}},
                },
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.11.0",
                    "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct", "--port", "8000"],
                    "ports": [{"containerPort": p, "protocol": "TCP"} for p in ports],
                    "env": [
                        {"name": "VLLM_USE_V1", "value": "1"},
                        {"name": "HF_HOME", "value": "/data"},
                    ],
                    "resources": {
                        "limits": {"nvidia.com/gpu": "1"},
                        "requests": {"nvidia.com/gpu": "1"},
                    },
                    "readinessProbe": {
                        "httpGet": {"path": "/health", "port": ports[0]},
                        "periodSeconds": 5,
                    },
                    "terminationMessagePath": "/dev/termination-log",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "serviceAccountName": "default",
            "nodeName": "gpu-node-1",
            "schedulerName": "default-scheduler",
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": t},
                {"type": "Initialized", "status": "True", "lastTransitionTime": t},
                {"type": "Ready", "status": flag, "lastTransitionTime": t},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": t},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
            ],
            "hostIP": "10.0.0.1",
            "hostIPs": [{"ip": "10.0.0.1"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": t,
            "qosClass": "BestEffort",
        },
    }


def pool_object(
    ns: str,
    name: str,
    match_labels: Mapping[str, str],
    target_ports: tuple[int, ...] = (8000,),
    uid: int = 0,
) -> dict[str, Any]:
    """An InferencePool v1 (the CRD's shape: selector.matchLabels, targetPorts[].number)."""
    return {
        "apiVersion": f"{POOL_GROUP}/v1",
        "kind": "InferencePool",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"00000000-0000-4000-9000-{uid:012d}",
            "resourceVersion": "",
            "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "selector": {"matchLabels": dict(match_labels)},
            "targetPorts": [{"number": p} for p in target_ports],
            "endpointPickerRef": {
                "group": "",
                "kind": "Service",
                "name": f"{name}-epp",
                "port": {"number": 9002},
                "failureMode": "FailClose",
            },
        },
        "status": {"parents": []},
    }


OBJECTIVE_GROUP = "inference.networking.x-k8s.io"


def objective_object(
    ns: str, name: str, pool: str, priority: int | None = None, *, created: str = ""
) -> dict[str, Any]:
    """An InferenceObjective v1alpha2 (the vendored CRD's shape)."""
    spec: dict[str, Any] = {"poolRef": {"group": POOL_GROUP, "kind": "InferencePool", "name": pool}}
    if priority is not None:
        spec["priority"] = priority
    return {
        "apiVersion": f"{OBJECTIVE_GROUP}/v1alpha2",
        "kind": "InferenceObjective",
        "metadata": {
            "name": name,
            "namespace": ns,
            "resourceVersion": "",
            "creationTimestamp": created or "2026-01-01T00:00:00Z",
        },
        "spec": spec,
    }


def rewrite_object(
    ns: str,
    name: str,
    pool: str,
    rules: list[tuple[list[str], list[tuple[str, int | None]]]],
    *,
    created: str = "",
) -> dict[str, Any]:
    """An InferenceModelRewrite v1alpha2: ``rules`` as (exact models, [(target, weight)])."""
    out_rules: list[dict[str, Any]] = []
    for models, targets in rules:
        rule: dict[str, Any] = {
            "targets": [
                {"modelRewrite": t, **({"weight": w} if w is not None else {})} for t, w in targets
            ]
        }
        if models:
            rule["matches"] = [{"model": {"type": "Exact", "value": m}} for m in models]
        out_rules.append(rule)
    return {
        "apiVersion": f"{OBJECTIVE_GROUP}/v1alpha2",
        "kind": "InferenceModelRewrite",
        "metadata": {
            "name": name,
            "namespace": ns,
            "resourceVersion": "",
            "creationTimestamp": created or "2026-01-01T00:00:00Z",
        },
        "spec": {
            "poolRef": {"group": POOL_GROUP, "kind": "InferencePool", "name": pool},
            "rules": out_rules,
        },
    }
