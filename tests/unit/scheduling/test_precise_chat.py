"""Precise prefix scoring of chat requests against KV events a real vLLM 0.32 published
while serving chat requests (``tests/fixtures/chat_tokens/``, ``bench.record_chat_tokens``):
two chats sharing a ~900-token system prompt, the second one block longer."""

from __future__ import annotations

import base64
import json
from typing import Any

from picker.datalayer.datastore import Endpoint
from picker.datalayer.kv_events import BlockStored, decode_batch
from picker.datalayer.kv_index import EventStream
from picker.request.parse import parse_request
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Params
from picker.scheduling.scorers.precise_prefix import PrecisePrefixScorer
from tests import FIXTURES

FIXTURE = FIXTURES / "chat_tokens"
META: dict[str, Any] = json.loads((FIXTURE / "meta.json").read_text())
FRAMES = [json.loads(x) for x in (FIXTURE / "frames.jsonl").read_text().splitlines() if x]
CASES = {c["name"]: c for c in META["cases"]}
POD, OTHER = META["pod"], "127.0.0.9:8000"
BS = META["block_size"]


def _scorer(frames: int, **params: Any) -> PrecisePrefixScorer:
    scorer = PrecisePrefixScorer(
        params=Params(
            {
                "tokenizer": str(FIXTURE / "tokenizer.json"),
                "block_size": BS,
                "hash_seed": META["python_hash_seed"],
                "events": {POD: "tcp://127.0.0.1:1"},
                **params,
            }
        )
    )
    stream = EventStream(scorer.index, POD)
    for f in FRAMES[:frames]:
        stream.handle(
            [f["topic"].encode(), f["seq"].to_bytes(8, "big"), base64.b64decode(f["payload"])]
        )
    return scorer


def _request(name: str, **extra: Any) -> InferenceRequest:
    body = {"model": META["model"], **CASES[name]["body"], **extra}
    return parse_request("/v1/chat/completions", json.dumps(body).encode())


def _score(scorer: PrecisePrefixScorer, req: InferenceRequest) -> list[float]:
    pods = [Endpoint(address=POD), Endpoint(address=OTHER)]
    scorer.produce(req, pods)
    return scorer.score(req, pods)


def test_chat_blocks_are_the_published_blocks() -> None:
    a, b = CASES["long_shared_a"]["chat_ids"], CASES["long_shared_b"]["chat_ids"]
    scorer = _scorer(0)
    assert scorer.chat is not None and scorer.chat.segmented
    first = decode_batch(base64.b64decode(FRAMES[0]["payload"])).events[-1]
    assert isinstance(first, BlockStored)
    assert first.block_hashes == scorer.hashes(_request("long_shared_a"))
    assert first.token_ids == a[: len(first.block_hashes) * BS]
    second = decode_batch(base64.b64decode(FRAMES[1]["payload"])).events[-1]
    assert isinstance(second, BlockStored)
    hb = scorer.hashes(_request("long_shared_b"))
    assert len(hb) == len(b) // BS == len(first.block_hashes) + 1
    assert second.parent_block_hash == hb[-2] and second.block_hashes == hb[-1:]


def test_chat_request_scores_what_the_pod_holds() -> None:
    nb = len(CASES["long_shared_b"]["chat_ids"]) // BS
    after_a = _scorer(1)
    assert _score(after_a, _request("long_shared_a")) == [1.0, 0.0]
    req = _request("long_shared_b")
    assert _score(after_a, req) == [(nb - 1) / nb, 0.0]  # the shared system prompt
    assert req.kv_prefix is not None and req.kv_prefix.matched == {POD: nb - 1}
    # the prompt's length in the pod's tokens, for the latency model
    assert req.kv_prefix.prompt_tokens == len(CASES["long_shared_b"]["chat_ids"])
    assert not req.kv_prefix.truncated
    assert _score(_scorer(2), _request("long_shared_b")) == [1.0, 0.0]
    assert after_a.chat_failures == 0


def test_what_changes_the_prompt_changes_the_match() -> None:
    scorer = _scorer(2)
    assert _score(scorer, _request("long_shared_a", cache_salt="s")) == [0.0, 0.0]
    kwargs = {"chat_template_kwargs": {"date_string": "1 Jan 2030"}}  # in the first block
    assert _score(scorer, _request("long_shared_a", **kwargs)) == [0.0, 0.0]
    assert _score(scorer, _request("long_shared_a", add_generation_prompt=False)) == [1.0, 0.0]


def test_unrenderable_chat_scores_zero_without_failing() -> None:
    scorer = _scorer(2)
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    messages = [*CASES["long_shared_a"]["body"]["messages"], {"role": "user", "content": [image]}]
    assert _score(scorer, _request("long_shared_a", messages=messages)) == [0.0, 0.0]
    bad_role = [{"role": "narrator", "content": "x"}]  # the template raises
    assert _score(scorer, _request("long_shared_a", messages=bad_role)) == [0.0, 0.0]
    assert scorer.chat_failures == 2


def test_template_parameters(tmp_path: Any) -> None:
    own = tmp_path / "t.jinja"
    own.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    scorer = _scorer(2, chat_template=str(own), chat_template_content_format="string")
    assert scorer.chat is not None and scorer.chat.template.content_format() == "string"
    assert _score(scorer, _request("long_shared_a")) == [0.0, 0.0]  # another prompt
    plain = _scorer(0, tokenizer=str(FIXTURES / "kv_events" / "tokenizer.json"))
    assert plain.chat is None  # no template beside that tokenizer: chat is not exact
