"""Budgets through the gateway, seen by the official OpenAI and Anthropic Python SDKs.

Usage:
  python e2e_budget.py http://127.0.0.1:PORT        (budgets: 2 requests per 60 s)
  python e2e_budget.py stop http://127.0.0.1:PORT   (budgets: enforce_mid_stream, 60 output
                                                     tokens a day)

Admission (the default): the gateway runs with `--budgets FILE` allowing each tenant 2
requests per 60 s. The third request of a tenant must raise the SDK's own `RateLimitError`
(status 429, the OpenAI error code `rate_limit_exceeded`, a `Retry-After` of about
60 s / 2 = 30 s), before any upstream call; another tenant is not affected.

stop: the file has `"enforce_mid_stream": true` and 60 output tokens a day per tenant; each
request asks the mock upstream for 200 tokens, so the answer passes the budget mid-way. The
stream has content, then the provider-shaped `budget_exceeded` error event, which each SDK's
streaming iterator raises (OpenAI: `APIError` with the error object; Anthropic: its status
error with the `error` event's body). What was generated was charged: the tenant's next
request is refused with the SDK's `RateLimitError`.
"""

import sys

import anthropic
import openai
from openai import OpenAI

mode = "admission"
if sys.argv[1] == "stop":
    mode = "stop"
    base = sys.argv[2].rstrip("/")
else:
    base = sys.argv[1].rstrip("/")


def client(key):
    return OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)


messages = [{"role": "user", "content": "Hi"}]


def admission():
    alice = client("sk-e2e-alice")
    for _ in range(2):
        text = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in alice.chat.completions.create(
                model="gpt-mock", messages=messages, stream=True, max_tokens=16
            )
            if chunk.choices
        )
        assert text, "an admitted stream has text"

    try:
        alice.chat.completions.create(model="gpt-mock", messages=messages, stream=True, max_tokens=16)
        raise AssertionError("the third request of the minute was admitted")
    except openai.RateLimitError as error:
        assert error.status_code == 429, error.status_code
        assert error.code == "rate_limit_exceeded", error.body
        retry = int(error.response.headers["retry-after"])
        # 2 requests per 60 s: one is back 30 s after the first; a second or so has passed.
        assert 28 <= retry <= 30, retry
        print(f"RateLimitError: {error.code}, Retry-After {retry} s")

    # Another tenant has its own budget.
    other = client("sk-e2e-bob").chat.completions.create(model="gpt-mock", messages=messages, stream=False)
    assert other.choices[0].message.content
    print("openai sdk over budget: ok")


# The mock upstream generates 200 tokens (words): far past the 60 output tokens of the day.
LONG = {"mock": {"tokens": 200}}


def stop_openai():
    carol = client("sk-e2e-carol")
    text = ""
    try:
        for chunk in carol.chat.completions.create(
            model="gpt-mock", messages=messages, stream=True, max_tokens=20, extra_body=LONG
        ):
            for choice in chunk.choices:
                text += choice.delta.content or ""
                assert choice.finish_reason is None, "a stream stopped for its budget never looks finished"
        raise AssertionError(f"the stream ran past its budget: {len(text)} chars")
    except openai.APIError as error:
        # The in-stream error object, raised by the SDK's iterator (not an HTTP status).
        assert not isinstance(error, openai.APIStatusError), type(error)
        assert error.type == "budget_exceeded", error.body
        assert error.code == "budget_exceeded", error.body
        print(f"openai: {type(error).__name__} {error.code!r} in-stream after {len(text.split())} words")
    assert text, "the stream had content before its budget ran out"
    assert len(text.split()) < 200, "stopped mid-way"
    # Charged what was generated (the day's 60 tokens and more): the next request waits.
    try:
        carol.chat.completions.create(model="gpt-mock", messages=messages, stream=True, max_tokens=20)
        raise AssertionError("admitted after spending the day's budget")
    except openai.RateLimitError as error:
        assert error.code == "rate_limit_exceeded", error.body
        print(f"openai: then RateLimitError {error.code!r}")


def stop_anthropic():
    dave = anthropic.Anthropic(base_url=base, api_key="sk-e2e-dave", max_retries=0, timeout=30)
    text = ""
    try:
        for event in dave.messages.create(
            model="claude-mock", max_tokens=20, messages=messages, stream=True, extra_body=LONG
        ):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
            assert event.type != "message_stop", "a stream stopped for its budget never looks finished"
        raise AssertionError(f"the stream ran past its budget: {len(text)} chars")
    except anthropic.APIStatusError as error:
        # Raised by the SDK's iterator for the `error` event, on a 200 response.
        assert error.status_code == 200, error.status_code
        assert error.body["type"] == "error", error.body
        assert error.body["error"]["type"] == "budget_exceeded", error.body
        print(f"anthropic: {type(error).__name__} {error.body['error']['type']!r} in-stream after {len(text.split())} words")
    assert text, "the stream had content before its budget ran out"
    assert len(text.split()) < 200, "stopped mid-way"
    try:
        dave.messages.create(model="claude-mock", max_tokens=20, messages=messages, stream=True)
        raise AssertionError("admitted after spending the day's budget")
    except anthropic.RateLimitError as error:
        assert error.body["error"]["type"] == "rate_limit_error", error.body
        print("anthropic: then RateLimitError 'rate_limit_error'")


if mode == "admission":
    admission()
else:
    stop_openai()
    stop_anthropic()
    print("sdks stopped mid-stream by their budget: ok")
