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
