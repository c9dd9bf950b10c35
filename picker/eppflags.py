"""The inference extension endpoint picker's command-line flags, as picker takes them.

The EPP (llm-d-router ``pkg/epp/server/options.go``, parsed by Go's pflag) and the
inference extension's Helm chart pass flags picker must accept to be a drop-in:
``--grpc-health-port``, ``--config-file``, Go booleans (``--secure-serving=false``),
Go durations (``--drain-timeout=30s``) and verbosity (``--v=2``, ``-v 2``). Each flag is
declared here by name; a flag neither the EPP nor picker defines is still an error.
Flags picker has no use for are accepted only where the chart passes them, and say
so in the log when they ask for something picker does not do.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from picker.config import Config

log = logging.getLogger("picker")

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def go_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``: 1 t T TRUE true True / 0 f F FALSE false False."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true or false)")


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def go_duration(text: str) -> float:
    """Seconds from a Go duration (``30s``, ``1m30s``, ``250ms``) or a bare number of
    seconds (picker's own form, ``30``)."""
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r}: a duration must not be negative")
        return value
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration (e.g. 30s, 1m30s, 250ms, or seconds)"
            )
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if not s:
        raise argparse.ArgumentTypeError("empty duration")
    return total


def verbosity_level(v: int) -> int:
    """The EPP's ``-v`` (its default 2; 3 verbose, 4 debug, 5 trace) as a logging level:
    below 2 only warnings, 2-3 info, 4 and more debug."""
    if v < 2:
        return logging.WARNING
    if v < 4:
        return logging.INFO
    return logging.DEBUG


class GoBoolAction(argparse.Action):
    """``--flag`` (true), ``--flag=false``, ``--flag=true``, as pflag's boolean flags."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("default", None)
        super().__init__(option_strings, dest, nargs="?", const="true", **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            setattr(namespace, self.dest, go_bool(str(values)))
        except argparse.ArgumentTypeError as e:
            parser.error(f"{option_string}: {e}")


# The EPP's (deprecated) metric flags → picker's metric-name override keys.
METRIC_FLAGS = {
    "total_queued_requests_metric": "waiting",
    "total_running_requests_metric": "running",
    "kv_cache_usage_percentage_metric": "kv_usage",
    "lora_info_metric": "lora_info",
    "cache_info_metric": "cache_config_info",
}
# Flags the EPP's chart may pass that ask for something picker does not do, when true.
_NOT_DONE = {
    "tracing": "picker emits no traces",
    "metrics_endpoint_auth": "picker's metrics endpoint has no authentication",
    "ha_enable_leader_election": "picker has no leader election; each replica routes",
    "enable_pprof": "picker has no pprof endpoint",
}


def add_flags(s: argparse.ArgumentParser) -> None:
    """Adds the EPP's flags to the ``serve`` parser (``--secure-serving``, ``--grpc-port``,
    ``--metrics-port``, ``--drain-timeout``, ``--cert-path`` and the pool flags are
    declared in ``picker.cli``)."""
    g = s.add_argument_group(
        "the inference extension endpoint picker's flags (see docs/kubernetes.md)"
    )
    g.add_argument(
        "--grpc-health-port",
        type=int,
        help="gRPC health port, plaintext (default 9003 with --pool-name or "
        "--endpoint-selector, else off; -1 disables)",
    )
    c = g.add_mutually_exclusive_group()
    c.add_argument("--config-file", help="the EPP's EndpointPickerConfig (YAML file)")
    c.add_argument("--config-text", help="the EPP's EndpointPickerConfig as text")
    g.add_argument(
        "-v", "--v", dest="verbosity", type=int, help="log verbosity as the EPP's (2 = info)"
    )
    g.add_argument("--zap-encoder", choices=["json", "console"], help="log format")
    for flag in ("tracing", "metrics-endpoint-auth", "ha-enable-leader-election", "enable-pprof"):
        g.add_argument(f"--{flag}", action=GoBoolAction, help=argparse.SUPPRESS)
    g.add_argument(
        "--enable-cert-reload",
        action=GoBoolAction,
        help="accepted; picker always reloads a mounted --cert-path",
    )
    for attr in METRIC_FLAGS:
        g.add_argument(f"--{attr.replace('_', '-')}", metavar="SPEC", help=argparse.SUPPRESS)
    g.add_argument("--model-server-metrics-path", help="the pods' metrics path (/metrics)")
    g.add_argument(
        "--refresh-metrics-interval", type=go_duration, help="seconds (or 50ms) between scrapes"
    )
    g.add_argument(
        "--metrics-staleness-threshold",
        type=go_duration,
        help="a pod without a good scrape this long is not routed to",
    )


def apply_flags(cfg: Config, args: argparse.Namespace) -> None:
    """The EPP's flags onto ``cfg`` (after picker's own ``--config`` was read)."""
    from picker.eppconfig import load_text

    text, where = args.config_text, "--config-text"
    if args.config_file:
        where = args.config_file
        with open(args.config_file, encoding="utf-8") as f:
            text = f.read()
    if text is not None:
        epp = load_text(text, where)
        cfg.scheduler = epp.scheduler
        if epp.scrape_path is not None:
            cfg.scrape.path = epp.scrape_path
        if epp.model_server is not None:
            _set_metrics(cfg, epp.model_server, epp.metrics)
    overrides = {}
    for attr, key in METRIC_FLAGS.items():
        value = getattr(args, attr)
        if value is not None:
            # The chart renders some as --flag="name": pflag keeps the quotes; drop them.
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            overrides[key] = value
    if overrides:
        _set_metrics(cfg, None, overrides)
    if args.model_server_metrics_path:
        cfg.scrape.path = args.model_server_metrics_path
    if args.refresh_metrics_interval is not None:
        cfg.scrape.interval = args.refresh_metrics_interval
    if args.metrics_staleness_threshold is not None:
        cfg.scrape.stale_after = args.metrics_staleness_threshold
    if args.grpc_health_port is not None:
        cfg.grpc_health_port = args.grpc_health_port
    elif args.pool_name or args.endpoint_selector:
        cfg.grpc_health_port = 9003
    for attr, what in _NOT_DONE.items():
        if getattr(args, attr):
            log.warning("--%s: %s", attr.replace("_", "-"), what)


def _set_metrics(cfg: Config, model_server: str | None, overrides: dict[str, Any]) -> None:
    """The pods' engine and metric names: of the discovered pool and every static pool."""
    targets: list[Any] = [cfg.discovery, *cfg.pools]
    for t in targets:
        if model_server is not None:
            t.model_server = model_server
            t.metrics = {}
        t.metrics = {**t.metrics, **overrides}


def log_setup(args: argparse.Namespace) -> None:
    """Logging from ``--log-level`` (wins when given), else ``-v``; ``--zap-encoder json``
    writes one JSON object per line."""
    if args.log_level:
        level: int | str = args.log_level.upper()
    elif args.verbosity is not None:
        level = verbosity_level(args.verbosity)
    else:
        level = logging.INFO
    handler = logging.StreamHandler()
    if args.zap_encoder == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (Unix seconds), ``level``, ``logger``, ``msg``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)
