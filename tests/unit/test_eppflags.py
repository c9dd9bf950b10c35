"""The EPP's flags on picker's command line: Go booleans and durations, verbosity, the
health port, the EndpointPickerConfig, the metric flags, and cluster-mode defaults."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from picker.cli import _parser, config_from_args, main
from picker.config import Config
from picker.eppflags import go_bool, go_duration, log_setup, verbosity_level

POOL = ("--pool-name", "p", "--kube-api-server", "http://127.0.0.1:1")
STATIC = ("-e", "10.0.0.1:8000")


def cfg_of(*argv: str) -> Config:
    return config_from_args(_parser().parse_args(["serve", *argv]))


def test_go_bool_and_duration() -> None:
    assert [go_bool(t) for t in ("1", "t", "TRUE", "True", "0", "f", "false")] == [
        *[True] * 4,
        *[False] * 3,
    ]
    with pytest.raises(argparse.ArgumentTypeError):
        go_bool("yes")
    assert go_duration("30") == 30 and go_duration("1.5") == 1.5
    assert go_duration("30s") == 30 and go_duration("1m30s") == 90
    assert go_duration("250ms") == pytest.approx(0.25) and go_duration("1h") == 3600
    for bad in ("", "30x", "s", "-1", "1m 2s"):
        with pytest.raises(argparse.ArgumentTypeError):
            go_duration(bad)


@pytest.mark.parametrize(
    ("argv", "tls"),
    [
        (POOL, True),  # cluster mode: TLS, as the EPP
        ((*POOL, "--secure-serving=false"), False),
        ((*POOL, "--secure-serving=False"), False),
        ((*POOL, "--no-secure-serving"), False),
        (STATIC, False),  # static endpoints: plaintext, as before
        ((*STATIC, "--secure-serving"), True),
        ((*STATIC, "--secure-serving=true"), True),
        ((*STATIC, "--secure-serving=1"), True),
    ],
)
def test_secure_serving(argv: tuple[str, ...], tls: bool) -> None:
    assert cfg_of(*argv).tls.enabled is tls


def test_bad_boolean_and_unknown_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cfg_of(*STATIC, "--secure-serving=maybe")
    assert e.value.code == 2 and "'maybe' is not a boolean" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cfg_of(*STATIC, "--not-an-epp-flag=1")  # no catch-all


def test_health_port_defaults() -> None:
    assert cfg_of(*POOL).grpc_health_port == 9003
    assert cfg_of(
        "--endpoint-selector", "a=b", "--endpoint-target-ports", "1"
    ).grpc_health_port == (9003)
    assert cfg_of(*STATIC).grpc_health_port == -1
    assert cfg_of(*STATIC, "--grpc-health-port", "9013").grpc_health_port == 9013
    assert cfg_of(*POOL, "--grpc-health-port=-1").grpc_health_port == -1


def test_drain_timeout_takes_go_durations() -> None:
    assert cfg_of(*STATIC, "--drain-timeout=45s").drain_timeout == 45
    assert cfg_of(*STATIC, "--drain-timeout", "12").drain_timeout == 12


def test_config_text_and_file_set_the_scheduler(tmp_path: Path) -> None:
    text = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: queue-scorer}, {type: metrics-data-source, parameters: {path: /m}},"
        " {type: core-metrics-extractor, parameters: {defaultEngine: sglang}}]\n"
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer, weight: 4}]}]\n"
    )
    cfg = cfg_of(*POOL, "--config-text", text)
    assert cfg.scheduler is not None and cfg.scheduler["scorers"] == {"queue-scorer": 4.0}
    assert cfg.scrape.path == "/m" and cfg.discovery.model_server == "sglang"
    path = tmp_path / "epp.yaml"
    path.write_text(text)
    cfg = cfg_of(*STATIC, "--config-file", str(path))
    assert cfg.pools[0].model_server == "sglang"
    with pytest.raises(SystemExit):
        cfg_of(*STATIC, "--config-file", str(path), "--config-text", text)


def test_a_config_plugin_without_equivalent_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: slo-aware-scorer, name: slo}]\n"
    )
    assert main(["serve", *STATIC, "--config-file", str(path)]) == 2
    assert "plugin 'slo' (type slo-aware-scorer)" in capsys.readouterr().err


def test_the_epp_metric_and_scrape_flags() -> None:
    cfg = cfg_of(
        *POOL,
        '--total-queued-requests-metric="sglang:num_queue_reqs"',  # as the chart renders it
        "--total-running-requests-metric", "nv_trt_llm_request_metrics{request_type=scheduled}",
        "--lora-info-metric", "",
        "--model-server-metrics-path=/prometheus/metrics",
        "--refresh-metrics-interval=100ms",
        "--metrics-staleness-threshold=2s",
    )  # fmt: skip
    assert cfg.discovery.metrics == {
        "waiting": "sglang:num_queue_reqs",
        "running": "nv_trt_llm_request_metrics{request_type=scheduled}",
        "lora_info": "",
    }
    assert cfg.scrape.path == "/prometheus/metrics"
    assert cfg.scrape.interval == pytest.approx(0.1) and cfg.scrape.stale_after == 2


def test_flags_picker_does_not_act_on_are_accepted_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "picker"):
        cfg_of(
            *POOL, "--zap-encoder", "json", "--tracing=false", "--metrics-endpoint-auth=false",
            "--enable-cert-reload", "--ha-enable-leader-election",
        )  # fmt: skip
    assert [r.getMessage() for r in caplog.records] == [
        "--ha-enable-leader-election: picker has no leader election; each replica routes"
    ]


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        ([], logging.INFO),
        (["--v=2"], logging.INFO),
        (["-v", "1"], logging.WARNING),
        (["-v=4"], logging.DEBUG),
        (["--v", "5"], logging.DEBUG),
        (["--v=5", "--log-level", "error"], logging.ERROR),
    ],
)
def test_verbosity(argv: list[str], level: int) -> None:
    args = _parser().parse_args(["serve", *STATIC, *argv])
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    try:
        log_setup(args)
        assert root.level == level
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    assert verbosity_level(3) == logging.INFO
