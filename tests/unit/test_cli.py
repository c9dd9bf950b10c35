"""The ``picker`` command line: flags onto the config, and clear exits on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from picker.cli import _parser, config_from_args, main
from picker.config import Config
from picker.scheduling.profile import DEFAULT_SCHEDULER


def cfg_of(*argv: str) -> Config:
    return config_from_args(_parser().parse_args(["serve", *argv]))


def test_endpoints_and_flags() -> None:
    cfg = cfg_of(
        "-e", "10.0.0.1:8000", "-e", "10.0.0.2:8000", "--model", "m",
        "--grpc-port", "1", "--metrics-port", "-1", "--transport", "grpcio",
        "--scrape-interval", "0.5",
    )  # fmt: skip
    assert [(p.name, p.endpoints, p.models) for p in cfg.pools] == [
        ("cli", ["10.0.0.1:8000", "10.0.0.2:8000"], ["m"])
    ]
    assert (cfg.grpc_port, cfg.metrics_port, cfg.transport) == (1, -1, "grpcio")
    assert cfg.scrape.interval == 0.5 and cfg.scrape.enabled


def test_policy_keeps_the_default_scorers() -> None:
    cfg = cfg_of("-e", "10.0.0.1:8000", "--policy", "round_robin", "--no-scrape")
    assert cfg.scheduler is not None and cfg.scheduler["picker"] == "round_robin"
    assert cfg.scheduler["scorers"] == DEFAULT_SCHEDULER["scorers"]
    assert not cfg.scrape.enabled


def test_config_file_and_flags_combine(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models: {m: ['10.0.0.1:8000']}\ngrpc_port: 5\n")
    cfg = cfg_of("-c", str(path), "-e", "10.0.0.9:1", "--grpc-port", "6")
    assert [p.name for p in cfg.pools] == ["m", "cli"] and cfg.grpc_port == 6


def test_no_endpoints_exits() -> None:
    with pytest.raises(SystemExit, match="no endpoints"):
        cfg_of()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-e", "nohost"], "is not host:port"),
        (["-e", "10.0.0.1:1", "--policy", "fastest"], "unknown picker 'fastest'"),
        (["-c", "/nonexistent/picker.yaml"], "No such file"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_discovery_flags_of_the_endpoint_picker() -> None:
    cfg = cfg_of(
        "--pool-name", "vllm-llama3-8b-instruct", "--pool-namespace", "llm",
        "--pool-group", "inference.networking.k8s.io", "--kube-api-server", "http://127.0.0.1:1",
    )  # fmt: skip
    d = cfg.discovery
    assert d.enabled and not cfg.pools
    assert (d.pool_name, d.pool_namespace, d.pool_group) == (
        "vllm-llama3-8b-instruct",
        "llm",
        "inference.networking.k8s.io",
    )
    assert d.api_server == "http://127.0.0.1:1"
    cfg = cfg_of("--endpoint-selector", "app=vllm", "--endpoint-target-ports", "8000,8001,8000")
    assert cfg.discovery.endpoint_selector == "app=vllm"
    assert cfg.discovery.endpoint_target_ports == [8000, 8001]
    ds = cfg.datastore()
    assert [p.name for p in ds.pools] == ["endpoint-selector"] and ds.pool_for("any") is not None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pool-name", "p", "--endpoint-selector", "a=b"], "either --pool-name or"),
        (["--endpoint-selector", "a=b"], "1 to 8 port numbers"),
        (["--endpoint-selector", "a=b", "--endpoint-target-ports", "80,x"], "'x' is not a port"),
        (["--endpoint-selector", "a in (b", "--endpoint-target-ports", "80"], "parentheses"),
        (["--pool-name", "p", "--pool-group", "example.com"], "not supported"),
        (["--pool-name", "p", "--kube-api-server", "ftp://x"], "http(s)://"),
        (["--pool-name", "Not_A_Name", "--kube-api-server", "http://x"], "not a valid"),
    ],
)
def test_bad_discovery_flags_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err
