"""Streams that end early: what was streamed is committed, the rest released, nothing held.

The test upstream can stall after N tokens (``pause_after``) until the client
leaves, or drop its connection after N tokens (``abort_after``); either way the
gateway has passed on exactly N content chunks and must charge exactly N output
tokens, counted with the model's tokenizer, plus its own count of the prompt.
"""

from __future__ import annotations

import time

import openai
import pytest

from tests.gateway.conftest import Gateway
from tests.gateway.ledger import amounts, events
from tests.gateway.test_sdk import MESSAGES, USER, member
from tokenquota.gateway import tokens

SETTLE_TIMEOUT_SECONDS = 30.0


def settled(gateway: Gateway, subject: str = USER) -> dict[str, object]:
    """The one commit, once the gateway has written it (a disconnect is noticed a moment
    after the client leaves); fails if a hold is still there by the deadline."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    while not events(gateway.quota, subject) or gateway.held(subject):
        assert time.monotonic() < deadline, f"still held: {gateway.held(subject)}"
        time.sleep(0.05)
    (event,) = events(gateway.quota, subject)
    return amounts(event)


@pytest.mark.parametrize("streamed", [0, 3])
def test_client_disconnect_commits_what_was_streamed(gateway: Gateway, streamed: int) -> None:
    gateway.upstream.pause_after = streamed
    sdk = gateway.sdk(member(gateway))
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=10, stream=True
    )
    pieces = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if len(pieces) == streamed:
            break
    stream.close()
    charged = settled(gateway)
    counted = tokens.count("gpt-4o-mini", "".join(pieces))
    assert charged.get("output_tokens", 0) == streamed == counted
    assert charged["input_tokens"] == tokens.chat_prompt("gpt-4o-mini", list(MESSAGES))


def test_upstream_failure_mid_stream_commits_what_was_streamed(gateway: Gateway) -> None:
    gateway.upstream.abort_after = 4
    sdk = gateway.sdk(member(gateway))
    pieces: list[str] = []

    def read() -> None:
        for chunk in sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIError) as caught:
        read()
    assert "upstream failed mid-stream" in caught.value.message
    assert len(pieces) == 4
    charged = settled(gateway)
    assert charged["output_tokens"] == 4
    assert charged["input_tokens"] == tokens.chat_prompt("gpt-4o-mini", list(MESSAGES))


def test_a_slow_stream_is_passed_on_as_it_comes(gateway: Gateway) -> None:
    gateway.upstream.chunk_delay = 0.05
    sdk = gateway.sdk(member(gateway))
    stream = sdk.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=6, stream=True
    )
    first = next(iter(stream))  # the role chunk, long before the last token exists
    assert first.choices[0].delta.role == "assistant"
    assert gateway.held(USER) != {}  # held while the stream runs
    rest = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices).count(" ") == 6
    assert settled(gateway)["output_tokens"] == 6
