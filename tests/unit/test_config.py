"""Configuration: the YAML shapes, defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from picker.config import Config, load_config, normalize_address
from picker.request.types import Criticality


def test_short_and_full_forms_build_pools() -> None:
    cfg = load_config(
        data={
            "models": {"m1": ["10.0.0.1:8000", " 10.0.0.2:08000 "]},
            "pools": [
                {
                    "name": "lora",
                    "models": ["base"],
                    "adapters": ["sql"],
                    "model_server": "sglang",
                    "endpoints": ["10.0.1.1:30000"],
                }
            ],
        }
    )
    ds = cfg.datastore()
    assert [p.name for p in ds.pools] == ["m1", "lora"]
    assert [e.address for e in ds.pools[0].endpoints] == ["10.0.0.1:8000", "10.0.0.2:8000"]
    assert ds.pool_for("m1") is ds.pools[0] and ds.pool_for("sql") is ds.pools[1]
    assert ds.pool_for("other") is None
    assert ds.pools[1].model_server == "sglang"


def test_defaults() -> None:
    cfg = load_config(data={})
    assert cfg == Config()
    assert (cfg.grpc_port, cfg.metrics_port, cfg.transport) == (9002, 9090, "native")
    assert cfg.scrape.interval == 0.05 and cfg.chars_per_token == 4.0
    assert cfg.scheduler is None and not cfg.flow_control.enabled


def test_sections_and_scalars(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "scrape: {interval: 0.25, max_failures: 5}\n"
        "saturation: {queue_threshold: 4}\n"
        "flow_control: {enabled: true, max_queue: 10}\n"
        "criticality: {batch: sheddable}\n"
        "default_criticality: critical\n"
        "chars_per_token: 3.5\n"
        "grpc_port: 1234\n"
        "transport: grpcio\n"
        "scheduler: {scorers: {queue: 1}}\n"
    )
    cfg = load_config(path)
    assert (cfg.scrape.interval, cfg.scrape.max_failures) == (0.25, 5)
    assert cfg.saturation.queue_threshold == 4
    assert cfg.flow_control.enabled and cfg.flow_control.max_queue == 10
    assert cfg.criticality == {"batch": Criticality.SHEDDABLE}
    assert cfg.default_criticality is Criticality.CRITICAL
    assert (cfg.chars_per_token, cfg.grpc_port, cfg.transport) == (3.5, 1234, "grpcio")
    assert cfg.scheduler == {"scorers": {"queue": 1}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nope": 1}, "unknown config keys: \\['nope'\\]"),
        ({"scrape": {"intervl": 1}}, "scrape: unknown keys \\['intervl'\\]"),
        ({"pools": [{"name": "p", "endpoints": ["x"]}]}, "is not host:port"),
        ({"models": {"m": ["10.0.0.1:99999"]}}, "is not host:port"),
        ({"criticality": {"m": "urgent"}}, "not one of critical, standard, sheddable"),
        ({"chars_per_token": 0}, "chars_per_token must be > 0"),
    ],
)
def test_errors_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(data=data)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        load_config(path)


def test_normalize_address() -> None:
    assert normalize_address("[::1]:0080") == "[::1]:80"
    with pytest.raises(ValueError):
        normalize_address("10.0.0.1")


def test_shipped_configs_build() -> None:
    """deploy/picker.yaml and the Kubernetes ConfigMap's picker.yaml are valid as shipped."""
    import yaml

    from picker.server import PickerServer

    root = Path(__file__).resolve().parents[2]
    PickerServer(load_config(root / "deploy/picker.yaml"))
    for doc in yaml.safe_load_all((root / "deploy/kubernetes/picker.yaml").read_text()):
        if doc and doc.get("kind") == "ConfigMap":
            for text in doc["data"].values():
                PickerServer(load_config(data=yaml.safe_load(text)))
