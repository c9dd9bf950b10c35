"""The offline validator itself (tests/deploy/kube.py): how a CRD's structural schema and
CEL rules are applied, on small schemas where the expected verdict is obvious."""

from __future__ import annotations

from typing import Any

from tests.deploy import kube


def crd(spec_schema: dict[str, Any]) -> kube.CRDVersion:
    return kube.CRDVersion(
        crd="widgets.example.com",
        group="example.com",
        kind="Widget",
        version="v1",
        namespaced=True,
        schema={"type": "object", "properties": {"spec": spec_schema}},
    )


def widget(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": spec,
    }


def test_unknown_fields_are_rejected_unless_preserved() -> None:
    strict = crd({"type": "object", "properties": {"a": {"type": "string"}}})
    assert kube.custom_resource_problems(widget({"a": "x"}), strict) == []
    assert kube.custom_resource_problems(widget({"a": "x", "b": 1}), strict)
    # an object with no properties admits no field (the API server would prune them all)
    empty = crd({"type": "object"})
    assert kube.custom_resource_problems(widget({"b": 1}), empty)
    preserved = crd({"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    assert kube.custom_resource_problems(widget({"b": 1}), preserved) == []
    free_map = crd({"type": "object", "additionalProperties": {"type": "integer"}})
    assert kube.custom_resource_problems(widget({"b": 1}), free_map) == []
    assert kube.custom_resource_problems(widget({"b": "1"}), free_map)


def test_int_or_string_nullable_and_exclusive_bounds() -> None:
    schema = crd(
        {
            "type": "object",
            "properties": {
                "port": {"x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True},
                "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
            },
        }
    )
    ok = {"port": "http", "note": None, "ratio": 0.5}
    assert kube.custom_resource_problems(widget(ok), schema) == []
    assert kube.custom_resource_problems(widget({"port": 80}), schema) == []
    assert kube.custom_resource_problems(widget({"port": 1.5}), schema)
    assert kube.custom_resource_problems(widget({"ratio": 0}), schema)


def test_defaults_are_applied_before_cel_rules() -> None:
    schema = crd(
        {
            "type": "object",
            "properties": {
                "kind": {"type": "string", "default": "Service"},
                "port": {"type": "integer"},
            },
            "x-kubernetes-validations": [
                {"rule": "self.kind != 'Service' || has(self.port)", "message": "port needed"}
            ],
        }
    )
    assert kube.custom_resource_problems(widget({"port": 1}), schema) == []
    assert kube.custom_resource_problems(widget({"kind": "Other"}), schema) == []
    (problem,) = kube.custom_resource_problems(widget({}), schema)
    assert "port needed" in problem


def test_cel_rules_that_cannot_be_evaluated_fail() -> None:
    """A rule using a function the validator does not implement is a failure, not a pass."""
    schema = crd(
        {
            "type": "object",
            "properties": {"url": {"type": "string"}},
            "x-kubernetes-validations": [{"rule": "isURL(self.url)"}],
        }
    )
    (problem,) = kube.custom_resource_problems(widget({"url": "https://x"}), schema)
    assert "could not be evaluated" in problem


def test_transition_rules_do_not_apply_to_a_create() -> None:
    schema = crd(
        {
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "x-kubernetes-validations": [{"rule": "self.a == oldSelf.a"}],
        }
    )
    before = kube.CEL_STATS.transition_skipped
    assert kube.custom_resource_problems(widget({"a": "x"}), schema) == []
    assert kube.CEL_STATS.transition_skipped == before + 1


def test_kubernetes_cel_split() -> None:
    schema = crd(
        {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "x-kubernetes-validations": [{"rule": "self.all(k, k.split('/')[0].size() < 5)"}],
        }
    )
    assert kube.custom_resource_problems(widget({"abc/d": "x"}), schema) == []
    assert kube.custom_resource_problems(widget({"abcdef/d": "x"}), schema)


def test_list_types() -> None:
    schema = crd(
        {
            "type": "object",
            "properties": {
                "tags": {
                    "type": "array",
                    "items": {"type": "string"},
                    "x-kubernetes-list-type": "set",
                },
                "ports": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "port": {"type": "integer"}},
                    },
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                },
            },
        }
    )
    ok = {"tags": ["a", "b"], "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 1}]}
    assert kube.custom_resource_problems(widget(ok), schema) == []
    assert kube.custom_resource_problems(widget({"tags": ["a", "a"]}), schema)
    dup = {"ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}
    assert kube.custom_resource_problems(widget(dup), schema)


def test_the_real_crds_cel_rules_run_on_the_chart() -> None:
    """The InferencePool's and the HTTPRoute's CEL rules are evaluated on the chart's
    objects, not skipped."""
    objs = kube.render({"inferencePool": {"modelServers": {"matchLabels": {"app": "v"}}}})
    before = kube.CEL_STATS.evaluated
    for obj in objs:
        if obj["kind"] == "InferencePool":
            kube.validate(obj)
    after_pool = kube.CEL_STATS.evaluated
    assert after_pool - before >= 2  # endpointPickerRef port, unique targetPorts
    for obj in objs:
        if obj["kind"] == "HTTPRoute":
            kube.validate(obj)
    assert kube.CEL_STATS.evaluated - after_pool >= 10


def test_metadata_rules() -> None:
    def meta_problems(kind: str, api: str, meta: dict[str, Any]) -> list[str]:
        return kube.metadata_problems(
            {"apiVersion": api, "kind": kind, "metadata": meta}, namespaced=True
        )

    assert (
        meta_problems("ConfigMap", "v1", {"name": "a.b-c", "labels": {"example.com/x": "y"}}) == []
    )
    assert meta_problems("ConfigMap", "v1", {"name": "A"})
    assert meta_problems("Service", "v1", {"name": "a.b"})  # a Service name is a DNS-1035 label
    assert meta_problems("Role", "rbac.authorization.k8s.io/v1", {"name": "a:b"}) == []
    assert meta_problems("ConfigMap", "v1", {"name": "a", "labels": {"x": 1}})
    assert meta_problems("ConfigMap", "v1", {"name": "a", "labels": {"-x": "y"}})
    assert meta_problems("ConfigMap", "v1", {"name": "a", "annotations": {"x/": "y"}})
