"""Acting on streams through the gateway, seen by the official OpenAI and Anthropic Python SDKs.

Usage:
  python e2e_policy.py stop   http://127.0.0.1:PORT   (gateway started with --stop-on .)
  python e2e_policy.py redact http://127.0.0.1:PORT REGEX   (gateway started with --redact REGEX)

stop: each SDK's stream ends without an exception and reports the provider's own reason
(OpenAI `finish_reason == "content_filter"`, Anthropic `stop_reason == "refusal"`).
redact: the streamed text is the non-streamed answer with every match replaced (the mock's
answer has matches that span events: `about 🦀` is two tokens).
"""

import re
import sys

import anthropic
from openai import OpenAI

mode, base = sys.argv[1], sys.argv[2].rstrip("/")
openai_client = OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0, timeout=30)
anthropic_client = anthropic.Anthropic(base_url=base, api_key="not-needed", max_retries=0, timeout=30)
messages = [{"role": "user", "content": "Tell me about server-sent events."}]


def openai_stream():
    text, reasons = "", []
    for chunk in openai_client.chat.completions.create(model="gpt-mock", messages=messages, stream=True):
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    return text, reasons


def anthropic_stream():
    with anthropic_client.messages.stream(model="claude-mock", max_tokens=64, messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    return text, final.stop_reason


if mode == "stop":
    text, reasons = openai_stream()
    assert reasons == ["content_filter"], reasons
    print(f"openai: stopped cleanly, finish_reason {reasons[-1]!r}, {len(text)} chars before")
    text, stop_reason = anthropic_stream()
    assert stop_reason == "refusal", stop_reason
    print(f"anthropic: stopped cleanly, stop_reason {stop_reason!r}, {len(text)} chars before")
elif mode == "redact":
    pattern = re.compile(sys.argv[3])
    reference = openai_client.chat.completions.create(model="gpt-mock", messages=messages, stream=False)
    expected = pattern.sub("[REDACTED]", reference.choices[0].message.content)
    text, reasons = openai_stream()
    assert text == expected, f"{text!r} vs {expected!r}"
    assert "[REDACTED]" in text, "the answer had no match: choose another pattern"
    print(f"openai: {text.count('[REDACTED]')} redactions, the rest as the upstream sent it")
    text, _ = anthropic_stream()
    assert not pattern.search(text), text
    assert "[REDACTED]" in text, text
    print(f"anthropic: {text.count('[REDACTED]')} redactions")
else:
    sys.exit(f"unknown mode {mode!r}")
