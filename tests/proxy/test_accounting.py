"""Load accounting from response streams, and prompt lengths at routing time (hand-computed cases)."""
from __future__ import annotations

import json

import pytest

from balanceroute.load import LoadTracker
from balanceroute.proxy.accounting import StreamAccount, Ticket
from balanceroute.proxy.prompt import PromptCounter, prompt_parts


def sse(*objs) -> bytes:
    return b"".join(b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n" for o in objs)


def chunk(text: str, usage: dict | None = None, chat: bool = False) -> dict:
    choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
    out = {"choices": [choice]}
    if usage is not None:
        out["usage"] = usage
    return out


def routed(prompt_len: int = 40) -> LoadTracker:
    tracker = LoadTracker(2)
    tracker.routed("r", 1, prompt_len, prompt_hash=7, running=True)
    return tracker


def test_deltas_count_one_token_each_and_the_usage_chunk_corrects_and_is_stripped():
    tracker = routed(40)
    account = StreamAccount(tracker, "r", 40, strip_usage=True)
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    out = account.feed(sse(role, chunk("a", chat=True), chunk("b c", chat=True)))
    assert tracker.kv_load.tolist() == [0, 42]  # the role-only delta carries no token; "b c" counts as one
    usage = {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}}
    out += account.feed(sse(usage, b"[DONE]"))
    assert tracker.kv_load.tolist() == [0, 15] and tracker.generated_of("r") == 3
    assert b'"usage"' not in out and out.count(b"data: ") == 4 and account.done
    assert tracker.prompt_hash_of("r") == 7 and tracker.worker_of("r") == 1


def test_continuous_usage_sets_counts_exactly_and_is_kept_when_the_client_asked():
    tracker = routed(40)
    account = StreamAccount(tracker, "r", 40, strip_usage=False)
    out = account.feed(sse(chunk("a b", {"prompt_tokens": 10, "completion_tokens": 2}),
                           chunk("c", {"prompt_tokens": 10, "completion_tokens": 3})))
    assert tracker.kv_load[1] == 13 and out.count(b'"usage"') == 2


def test_events_split_across_reads_are_joined_before_accounting():
    tracker = routed(5)
    account = StreamAccount(tracker, "r", 5, strip_usage=False)
    data = sse(chunk("a"), chunk("b"), b"[DONE]")
    out = b"".join(account.feed(data[i:i + 7]) for i in range(0, len(data), 7))
    assert out == data and tracker.kv_load[1] == 7 and account.done


def test_error_event_and_non_json_lines_are_forwarded_as_they_are():
    tracker = routed(5)
    account = StreamAccount(tracker, "r", 5, strip_usage=True)
    data = b": keep-alive\n\n" + sse(b"{not json", {"error": {"message": "boom"}})
    assert account.feed(data) == data and account.error == {"message": "boom"} and not account.done


def test_ticket_releases_once():
    calls = []
    ticket = Ticket("r", 0, 5, lambda rid, ok: calls.append((rid, ok)))
    ticket.release(True)
    ticket.release(False)
    assert calls == [("r", True)]


@pytest.mark.parametrize("body, chat, parts", [
    ({"prompt": "hello world"}, False, ("hello world", [])),
    ({"prompt": ["ab", "cd"]}, False, ("ab\ncd", [])),
    ({"prompt": [1, 2, 3]}, False, ("", [1, 2, 3])),
    ({"prompt": [[1, 2], [3]]}, False, ("", [1, 2, 3])),
    ({"messages": [{"role": "system", "content": "be brief"},
                   {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]},
     True, ("be brief\nhi", [])),
    ({"prompt": None}, False, ("", [])),
])
def test_prompt_parts(body, chat, parts):
    assert prompt_parts(body, chat) == parts


def test_prompt_estimate_is_utf8_bytes_over_four_and_a_tokenizer_counts_exactly():
    estimate = PromptCounter()
    assert estimate("abcdefgh") == 2 and estimate("abcdefghi") == 3
    assert estimate("日本語") == 3  # 9 bytes
    assert estimate("", [7] * 5) == 5 and estimate("") == 1

    class Words:
        def encode(self, text):
            return text.split()

    assert PromptCounter(Words())("one two three four five") == 5
