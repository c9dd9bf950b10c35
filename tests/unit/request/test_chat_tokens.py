"""Chat prompts rendered and encoded by picker against the token ids real vLLM 0.32 gave.

The fixture (``tests/fixtures/chat_tokens/``, written by ``python -m
bench.record_chat_tokens``) holds chat request bodies with the ids vLLM's ``/tokenize``
and ``/v1/chat/completions`` (``return_token_ids``) returned for each, and the model's
tokenizer files and chat template. No vLLM is needed here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer

from picker.request.chat_template import ChatTemplate
from picker.request.chat_tokens import ChatTokenizer, PieceCache
from picker.request.parse import parse_request
from picker.request.types import ChatInput
from tests import FIXTURES

FIXTURE = FIXTURES / "chat_tokens"
META: dict[str, Any] = json.loads((FIXTURE / "meta.json").read_text())
CASES = {c["name"]: c for c in META["cases"]}
SPECIALS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>")


def _tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))


def _chat(body: dict[str, Any]) -> ChatInput:
    req = parse_request("/v1/chat/completions", json.dumps({"model": "m", **body}).encode())
    assert req.chat is not None
    return req.chat


def _chat_tokenizer(cache_bytes: int = 1 << 20) -> ChatTokenizer:
    return ChatTokenizer(_tokenizer(), ChatTemplate.from_dir(FIXTURE), cache_bytes=cache_bytes)


def _for_case(case: dict[str, Any], ct: ChatTokenizer) -> tuple[ChatTokenizer, ChatInput]:
    """The case's tokenizer and input: a body with its own template (vLLM trusted it when
    recording) is rendered with that template."""
    chat = _chat(case["body"])
    own = case["body"].get("chat_template")
    if own is None:
        return ct, chat
    template = ChatTemplate({"default": own}, ct.template.special_tokens)
    return ChatTokenizer(_tokenizer(), template), dataclasses.replace(chat, own_template=False)


def test_fixture_is_real() -> None:
    assert META["vllm"].startswith("0.32")
    assert len(CASES) >= 15
    assert sum(p.stat().st_size for p in FIXTURE.iterdir()) < 250_000
    for c in META["cases"]:
        assert len(c["chat_ids"]) == c["prompt_tokens"], c["name"]
        if "tokenize_ids" in c:  # /tokenize and the chat endpoint agree
            assert c["tokenize_ids"] == c["chat_ids"], c["name"]
    # the template is the one with tools, and its format is detected as vLLM did
    assert "tools" in (FIXTURE / "chat_template.jinja").read_text()


@pytest.mark.parametrize("name", sorted(CASES))
def test_ids_equal_vllm(name: str) -> None:
    """The key proof: picker's ids for each chat request are the ids real vLLM used."""
    case = CASES[name]
    ct, chat = _for_case(case, _chat_tokenizer())
    cold = ct.encode(chat)
    assert cold == case["chat_ids"]
    assert ct.encode(chat) == cold  # from the cache
    assert ct.encode_whole(ct.template.render(chat)) == cold  # uncached, whole text


def test_formats_and_bos() -> None:
    ct = _chat_tokenizer()
    assert ct.segmented
    assert ct.template.content_format() == "openai"  # loops over message['content']
    ids = CASES["system_user"]["chat_ids"]
    assert ids[0] == 1 and ids.count(1) == 1  # the template's BOS, not a second one
    plain = ChatTemplate({"default": CASES["string_format"]["body"]["chat_template"]})
    assert plain.content_format() == "string"


def test_body_flags_change_the_ids() -> None:
    """Each body field the template reads changes the prompt: not a fixed rendering."""
    ids = {name: c["chat_ids"] for name, c in CASES.items()}
    base = ids["system_user"]
    assert ids["no_generation_prompt"] == base[: len(ids["no_generation_prompt"])]
    assert len(ids["no_generation_prompt"]) < len(base)
    assert ids["template_kwargs"] != base and ids["reasoning_effort"] != base
    assert ids["tools"] != base


def test_shared_system_prompt_is_encoded_once() -> None:
    tok = _tokenizer()
    calls: list[str] = []

    class Counting:
        """The tokenizer, recording each text it encodes."""

        def __getattr__(self, name: str) -> Any:
            return getattr(tok, name)

        def encode(self, text: str, add_special_tokens: bool = True) -> Any:
            calls.append(text)
            return tok.encode(text, add_special_tokens=add_special_tokens)

    ct = ChatTokenizer(Counting(), ChatTemplate.from_dir(FIXTURE))
    a, b = CASES["long_shared_a"], CASES["long_shared_b"]
    system = a["body"]["messages"][0]["content"]
    calls.clear()
    assert ct.encode(_chat(a["body"])) == a["chat_ids"]
    assert sum(system in c for c in calls) == 1
    hits = ct.cache.hits
    assert ct.encode(_chat(b["body"])) == b["chat_ids"]
    assert sum(system in c for c in calls) == 1  # not encoded again
    assert ct.cache.hits > hits


def test_cache_is_a_bounded_lru() -> None:
    cache = PieceCache(max_bytes=4_000)
    ids = tuple(range(20))
    for i in range(50):
        cache.put(f"piece {i}", ids)
        assert cache.bytes <= cache.max_bytes
    assert len(cache) < 50
    assert cache.bytes == sum(
        PieceCache.cost(f"piece {i}", ids) for i in range(50 - len(cache), 50)
    )
    newest, oldest = "piece 49", f"piece {50 - len(cache)}"
    assert cache.get(oldest) == ids  # a hit makes it most recent ...
    cache.put("one more", ids)
    assert cache.get(oldest) == ids  # ... so the next eviction spares it
    assert cache.get(f"piece {51 - len(cache)}") is None
    assert cache.get(newest) == ids
    cache.put("x" * 300, ids)  # over an eighth of the cache: not kept, nothing evicted
    assert cache.get("x" * 300) is None and cache.get(newest) == ids


def test_tiny_cache_gives_the_same_ids() -> None:
    tiny = _chat_tokenizer(cache_bytes=2_000)  # pieces evicted at once or never kept
    for name in ("tools", "long_shared_a", "multi_turn"):
        assert tiny.encode(_chat(CASES[name]["body"])) == CASES[name]["chat_ids"]
    assert tiny.cache.bytes <= 2_000


_text = st.lists(
    st.one_of(
        st.sampled_from(SPECIALS),
        st.text(alphabet=st.sampled_from(list("ab cé\n\t.,日🚀<|>")), max_size=12),
    ),
    max_size=12,
).map("".join)


_SHARED = _chat_tokenizer(cache_bytes=4096)


@settings(max_examples=300, deadline=None)
@given(_text)
def test_segmented_equals_whole(text: str) -> None:
    ct = _SHARED
    assert ct.encode_text(text) == ct.encode_whole(text)
    assert ct.encode_text(text) == ct.encode_whole(text)  # the second time from cache


def _tokenizer_with(token: AddedToken) -> Tokenizer:
    tok = _tokenizer()
    tok.add_special_tokens([token])
    return tok


def test_stripping_added_token_disables_segments() -> None:
    tok = _tokenizer_with(AddedToken("<|strip|>", lstrip=True, rstrip=True, special=True))
    ct = ChatTokenizer(tok, ChatTemplate.from_dir(FIXTURE))
    assert not ct.segmented
    text = "a  <|strip|>  b<|eot_id|> c"
    assert ct.encode_text(text) == tok.encode(text, add_special_tokens=False).ids
    assert len(ct.cache) == 0


def test_metaspace_first_disables_segments(tmp_path: Path) -> None:
    spec = json.loads((FIXTURE / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}
        ],
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert not ChatTokenizer(tok, ChatTemplate.from_dir(FIXTURE)).segmented


def test_limit_stops_after_enough_ids() -> None:
    ct = _chat_tokenizer()
    case = CASES["long_shared_b"]
    ids = ct.encode(_chat(case["body"]), limit=200)
    assert 200 <= len(ids) < len(case["chat_ids"])
    assert ids == case["chat_ids"][: len(ids)]


def test_add_special_tokens_from_the_body() -> None:
    ct = _chat_tokenizer()
    chat = _chat(CASES["system_user"]["body"])
    ids = ct.encode(chat, add_special_tokens=True)
    assert ids == [1, *CASES["system_user"]["chat_ids"]]  # the post-processor's BOS too
