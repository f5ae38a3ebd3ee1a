"""Counting a prompt's tokens before it is sent, without a model and without a network.

The reservation a call takes is sized by this count (plus ``max_tokens``), and
a stream cut short is charged what was streamed, counted here. OpenAI's models
are counted exactly with their own encodings (``bpe-openai`` ships them in its
wheel). Other families (Llama, Mistral, Qwen, ...) have tokenizers of their own
that we cannot load offline, so their text is estimated at one token per three
UTF-8 bytes, rounded up: above what their tokenizers give for ordinary text
(about four bytes a token), so a reservation errs on the side of holding more.
The usage the upstream reports is what is finally committed either way.

Chat prompts add OpenAI's framing: 3 tokens per message (4 with a ``name``)
and 3 that prime the reply.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Final

BYTES_PER_TOKEN: Final = 3
TOKENS_PER_MESSAGE: Final = 3
TOKENS_PER_NAME: Final = 1
REPLY_PRIMING: Final = 3
# Model name prefixes the packaged table does not list yet, by encoding.
_O200K: Final = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-")
_CL100K: Final = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-")


@functools.lru_cache(maxsize=256)
def encoding_for(model: str) -> Any | None:
    """The OpenAI encoding of ``model`` (bpe-openai's own table first), else None.

    bpe-openai is imported here, not with the module: it reads a vocabulary when
    imported, which every app start would pay even without an upstream.
    """
    import bpe_openai

    try:
        return _named(bpe_openai.encoding_name_for_model(model))
    except (bpe_openai.TokenizerError, KeyError, ValueError):
        pass  # not in its table (or listed but not built): by the name's prefix
    if model.startswith(_O200K):
        return _named("o200k_base")
    if model.startswith(_CL100K):
        return _named("cl100k_base")
    return None


@functools.lru_cache(maxsize=8)
def _named(name: str) -> Any:
    import bpe_openai

    return bpe_openai.get_encoding(name)


def count(model: str, text: str) -> int:
    """Tokens of ``text`` for ``model``: exact for OpenAI's models, an estimate otherwise."""
    if not text:
        return 0
    encoding = encoding_for(model)
    if encoding is None:
        return math.ceil(len(text.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN)
    return len(encoding.encode_ordinary(text))


def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def chat_prompt(model: str, messages: list[Any]) -> int:
    total = REPLY_PRIMING
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE + count(model, _content_text(message.get("content")))
        if isinstance(message.get("name"), str):
            total += TOKENS_PER_NAME + count(model, message["name"])
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                function = call["function"]
                total += count(model, str(function.get("name", "")))
                total += count(model, str(function.get("arguments", "")))
    return total


def text_inputs(model: str, value: Any) -> int:
    """A completions ``prompt`` or an embeddings ``input``: a string, a list of strings,
    a list of token ids, or a list of lists of token ids (ids count one each)."""
    if isinstance(value, str):
        return count(model, value)
    if not isinstance(value, list):
        return 0
    total = 0
    for item in value:
        if isinstance(item, str):
            total += count(model, item)
        elif isinstance(item, int):
            total += 1
        elif isinstance(item, list):
            total += len(item)
    return total
