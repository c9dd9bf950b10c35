"""The Prometheus text parser: real vLLM capture, escaping, fallbacks, other servers."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from picker.datalayer.datastore import EndpointMetrics
from picker.datalayer.metrics_text import (
    MetricNames,
    MetricSpec,
    MissingMetricsError,
    parse_metrics,
    parse_spec,
)
from picker.datalayer.model_servers import MODEL_SERVERS, names_from_config
from tests import FIXTURES

FIXTURE = (FIXTURES / "vllm-0.32.0-cpu-metrics.txt").read_text()
VLLM = MODEL_SERVERS["vllm"]
# The required families at zero load (appended to pages that test something else).
IDLE = "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n"


def reference(text: str, names: MetricNames, now: float = 5.0) -> EndpointMetrics:
    """Same reduction on top of prometheus_client's full parser (the oracle)."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))

    def match(spec_text: str) -> list[tuple[dict[str, str], float]]:
        if not spec_text:
            return []
        spec = parse_spec(spec_text)
        return [(lb, v) for lb, v in samples.get(spec.name, []) if spec.matches(lb)]

    def num(v: str | None) -> int:
        try:
            return int(float(v)) if v else 0
        except ValueError:
            return 0

    def csv(v: str) -> frozenset[str]:
        return frozenset(x.strip() for x in v.split(",") if x.strip())

    kv = 0.0
    for alt in names.kv_usage:
        vals = [v for _, v in match(alt) if math.isfinite(v)]
        if vals:
            kv = sum(vals) / len(vals)
            break
    lora = max(match(names.lora_info), key=lambda s: s[1], default=({}, 0.0))[0]
    cache = next(iter(match(names.cache_config_info)), ({}, 0.0))[0]

    def total(spec_text: str) -> float:
        return sum(v for _, v in match(spec_text) if math.isfinite(v))

    return EndpointMetrics(
        waiting=round(sum(v for _, v in match(names.waiting) if math.isfinite(v))),
        running=round(sum(v for _, v in match(names.running) if math.isfinite(v))),
        kv_usage=kv,
        running_adapters=csv(lora.get("running_lora_adapters", "")),
        waiting_adapters=csv(lora.get("waiting_lora_adapters", "")),
        max_lora=num(lora.get("max_lora")),
        block_size=num(cache.get("block_size")),
        num_blocks=num(cache.get("num_gpu_blocks")),
        prefill_seconds=total(names.prefill_seconds),
        prefill_tokens=total(names.prefill_tokens),
        prefill_count=total(names.prefill_count),
        queue_seconds=total(names.queue_seconds),
        ttft_seconds=total(names.ttft_seconds),
        ttft_count=total(names.ttft_count),
        itl_seconds=total(names.itl_seconds),
        itl_count=total(names.itl_count),
        prompt_tokens=total(names.prompt_tokens),
        prompt_count=total(names.prompt_count),
        scraped_at=now,
    )


def loaded_fixture() -> str:
    """The capture with non-zero load and a LoRA series spliced in."""
    text = FIXTURE
    for name, value in (
        ("vllm:num_requests_waiting", "7.0"),
        ("vllm:num_requests_running", "12.0"),
        ("vllm:kv_cache_usage_perc", "4.25e-01"),
    ):
        old = f'{name}{{engine="0",model_name="tiny"}} 0.0\n'
        assert old in text
        text = text.replace(old, old.replace(" 0.0", " " + value))
    lora = (
        "# HELP vllm:lora_requests_info Running stats on lora requests.\n"
        "# TYPE vllm:lora_requests_info gauge\n"
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a,b",'
        'waiting_lora_adapters=""} 1.7e+09\n'
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora, c",'
        'waiting_lora_adapters="d"} 1.8e+09\n'
    )
    return text + lora


def test_fixture_matches_prometheus_client() -> None:
    got = parse_metrics(FIXTURE, VLLM, 5.0)
    assert got == reference(FIXTURE, VLLM)
    assert (got.block_size, got.num_blocks) == (128, 8192)
    assert got.scraped_at == 5.0


def test_loaded_fixture_matches_prometheus_client() -> None:
    text = loaded_fixture()
    got = parse_metrics(text, VLLM, 5.0)
    assert got == reference(text, VLLM)
    assert (got.waiting, got.running, got.kv_usage) == (7, 12, 0.425)
    # The series with the greatest value (latest timestamp) wins.
    assert got.running_adapters == {"sql-lora", "c"}
    assert got.waiting_adapters == {"d"}
    assert got.max_lora == 4


def test_crlf_line_endings() -> None:
    text = loaded_fixture().replace("\n", "\r\n")
    assert parse_metrics(text, VLLM, 5.0) == parse_metrics(loaded_fixture(), VLLM, 5.0)


def test_escaped_labels() -> None:
    text = (
        "# HELP vllm:lora_requests_info x\n"
        'vllm:lora_requests_info{a="q\\"uo\\\\",b="x\\\\\\"},y",'
        'running_lora_adapters="r1,r\\"2",max_lora="2",waiting_lora_adapters="w\\nx"} 3\n'
        'vllm:num_requests_waiting{model_name="a\\\\"} 2\n'
        'vllm:num_requests_running{weird="}, \\"vllm:num_requests_running 99"} 3e0\n'
        "vllm:kv_cache_usage_perc 0.5\n"
    )
    got = parse_metrics(text, VLLM, 5.0)
    assert got == reference(text, VLLM)
    assert got.running_adapters == {"r1", 'r"2'}
    assert got.waiting_adapters == {"w\nx"}
    assert (got.waiting, got.running, got.max_lora) == (2, 3, 2)


def test_missing_optional_families_give_defaults() -> None:
    text = "# HELP foo bar\n# TYPE foo gauge\nfoo 1\nvllm:num_requests_waiting_by_reason 5\n"
    assert parse_metrics(text + IDLE, VLLM, 3.0) == EndpointMetrics(scraped_at=3.0)


HTML = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body>\n</html>\n"
UNRELATED = (
    "# HELP process_cpu_seconds_total Total user and system CPU time.\n"
    "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 4.2\n"
    'python_info{implementation="CPython",major="3"} 1.0\n'
    "vllm:num_requests_waiting_by_reason 5\nvllm:num_requests_waitingx 1\n"
)


@pytest.mark.parametrize(
    "text",
    [
        "",
        HTML,
        UNRELATED,
        random.Random(11).randbytes(4096).decode("latin-1"),
        "vllm:num_requests_waiting 1\nvllm:num_requests_running 2\n",  # no KV usage
        "vllm:num_requests_waiting 1\nvllm:kv_cache_usage_perc 0.1\n",  # no running
        "vllm:num_requests_running 1\nvllm:gpu_cache_usage_perc 0.1\n",  # no waiting
        "".join("# " + line + "\n" for line in IDLE.splitlines()),  # commented out
    ],
    ids=["empty", "html", "unrelated", "random", "no-kv", "no-running", "no-waiting", "comments"],
)
def test_page_without_required_families_raises(text: str) -> None:
    with pytest.raises(MissingMetricsError, match="not a usable metrics page") as err:
        parse_metrics(text, VLLM, 3.0)
    assert isinstance(err.value, ValueError)


def test_missing_error_names_what_is_lacking() -> None:
    with pytest.raises(MissingMetricsError) as err:
        parse_metrics(HTML, VLLM, 3.0)
    msg = str(err.value)
    for name in (VLLM.waiting, VLLM.running, *VLLM.kv_usage):
        assert name in msg
    assert "<!DOCTYPE html>" in msg  # the start of the page, for the log
    with pytest.raises(MissingMetricsError) as err:
        parse_metrics("vllm:num_requests_waiting 1\nvllm:gpu_cache_usage_perc 0\n", VLLM, 0)
    assert VLLM.running in str(err.value) and "kv_cache" not in str(err.value)


def test_required_families_follow_the_names() -> None:
    # Label matchers: the family present with other label values does not count.
    trt = MODEL_SERVERS["trtllm"]
    no_waiting = TRTLLM_TEXT.replace('request_type="waiting"', 'request_type="other"')
    with pytest.raises(MissingMetricsError, match="waiting"):
        parse_metrics(no_waiting, trt, 0)
    with pytest.raises(MissingMetricsError, match="sglang:token_usage"):
        parse_metrics(SGLANG_TEXT.replace("sglang:token_usage", "x"), MODEL_SERVERS["sglang"], 0)
    # A disabled field ("" or no kv alternatives) is not required.
    names = names_from_config("vllm", {"running": "", "kv_usage": []})
    assert parse_metrics("vllm:num_requests_waiting 2\n", names, 0).waiting == 2
    # Present with a non-finite value: present (reads as 0), not missing.
    assert parse_metrics(IDLE.replace(" 0\n", " NaN\n"), VLLM, 0) == EndpointMetrics()


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=2048))
def test_garbage_never_reads_as_an_idle_pod(garbage: bytes) -> None:
    with pytest.raises(ValueError):
        parse_metrics(garbage.decode("utf-8", "replace"), VLLM, 0)


def test_gpu_cache_usage_fallback_and_precedence() -> None:
    old = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\nvllm:num_requests_waiting 4\n'
    old += "vllm:num_requests_running 1\n"
    got = parse_metrics(old, VLLM, 1.0)
    assert (got.kv_usage, got.waiting) == (0.5, 4)
    both = old + 'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
    assert parse_metrics(both, VLLM, 1.0).kv_usage == 0.25


def test_special_values() -> None:
    text = (
        "vllm:num_requests_waiting NaN\n"
        "vllm:num_requests_running +Inf\n"
        "vllm:kv_cache_usage_perc 1.5E-1 1700000000000\n"
    )
    got = parse_metrics(text, VLLM, 1.0)
    assert (got.waiting, got.running, got.kv_usage) == (0, 0, 0.15)


def test_first_line_and_no_trailing_newline() -> None:
    text = "vllm:num_requests_waiting 3\nvllm:kv_cache_usage_perc 0\nvllm:num_requests_running 2"
    got = parse_metrics(text, VLLM, 0)
    assert (got.waiting, got.running) == (3, 2)


def test_data_parallel_series_are_summed_and_averaged() -> None:
    text = (
        'vllm:num_requests_waiting{engine="0"} 1\n'
        'vllm:num_requests_waiting{engine="1"} 2\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.2\n'
        'vllm:kv_cache_usage_perc{engine="1"} 0.4\n'
        'vllm:num_requests_running{engine="0"} 1\n'
    )
    got = parse_metrics(text, VLLM, 5.0)
    assert got == reference(text, VLLM)
    assert got.waiting == 3 and got.kv_usage == pytest.approx(0.3)


def test_malformed_wanted_line_raises() -> None:
    with pytest.raises(ValueError):
        parse_metrics('vllm:num_requests_waiting{a="x} 1\n', VLLM, 0)
    with pytest.raises(ValueError):
        parse_metrics("vllm:num_requests_waiting notanumber\n", VLLM, 0)
    # Malformed lines of other families are never read.
    assert parse_metrics('other{a="x} 1\n' + IDLE.replace(" 0\n", " 1\n", 1), VLLM, 0).waiting == 1


SGLANG_TEXT = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="qwen",engine_type="unified"} 5.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="qwen",engine_type="unified"} 9.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="qwen",engine_type="unified"} 0.61
"""

TRTLLM_TEXT = """\
# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="trt",request_type="context",version="1"} 1
nv_trt_llm_request_metrics{model="trt",request_type="scheduled",version="1"} 6
nv_trt_llm_request_metrics{model="trt",request_type="max",version="1"} 64
nv_trt_llm_request_metrics{model="trt",request_type="active",version="1"} 8
nv_trt_llm_request_metrics{model="trt",request_type="waiting",version="1"} 2
# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="trt",version="1"} 512
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="trt",version="1"} 0.75
"""


def test_sglang() -> None:
    names = MODEL_SERVERS["sglang"]
    got = parse_metrics(SGLANG_TEXT, names, 2.0)
    assert got == reference(SGLANG_TEXT, names, 2.0)
    assert (got.waiting, got.running, got.kv_usage) == (9, 5, 0.61)


def test_trtllm_label_matchers() -> None:
    names = MODEL_SERVERS["trtllm"]
    got = parse_metrics(TRTLLM_TEXT, names, 2.0)
    assert got == reference(TRTLLM_TEXT, names, 2.0)
    assert (got.waiting, got.running, got.kv_usage) == (2, 6, 0.75)


def test_lora_single_series_and_empty() -> None:
    text = (
        'vllm:lora_requests_info{max_lora="1",running_lora_adapters="",'
        'waiting_lora_adapters=""} 1.7e9\n'
    )
    got = parse_metrics(text + IDLE, VLLM, 0)
    assert (got.running_adapters, got.waiting_adapters, got.max_lora) == (
        frozenset(),
        frozenset(),
        1,
    )


def test_spec_parsing_and_overrides() -> None:
    assert parse_spec("a:b") == MetricSpec("a:b")
    assert parse_spec('m{x="1, 2",y=z}') == MetricSpec("m", (("x", "1, 2"), ("y", "z")))
    with pytest.raises(ValueError):
        parse_spec("not a name{")
    names = names_from_config("vllm", {"kv_usage": "my_kv", "lora_info": None})
    assert names.kv_usage == ("my_kv",) and names.lora_info == ""
    assert names.waiting == VLLM.waiting
    assert names_from_config("sglang") is MODEL_SERVERS["sglang"]
    assert MetricNames("w", "r", ["a", "b"]).kv_usage == ("a", "b")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        names_from_config("tgi")
    with pytest.raises(ValueError):
        names_from_config("vllm", {"queue": "x"})
    with pytest.raises(ValueError):
        MetricNames("bad name", "r", ())


label_value = st.text(alphabet=st.sampled_from('ab ,="\\{}\n'), max_size=12)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(label_value, min_size=1, max_size=4), waiting=st.integers(0, 10**6))
def test_arbitrary_label_values_agree_with_prometheus_client(
    values: list[str], waiting: int
) -> None:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    labels = ",".join(f'l{i}="{esc(v)}"' for i, v in enumerate(values))
    adapters = esc(",".join(values))
    text = (
        f"vllm:num_requests_waiting{{{labels}}} {waiting}\n"
        f'vllm:lora_requests_info{{{labels},running_lora_adapters="{adapters}"}} 1\n'
        f"vllm:num_requests_running{{{labels}}} 1\nvllm:gpu_cache_usage_perc{{{labels}}} 0.5\n"
    )
    assert parse_metrics(text, VLLM, 5.0) == reference(text, VLLM)
