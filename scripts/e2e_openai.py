"""Stream chat completions through the gateway with the official OpenAI Python SDK.

Usage: python e2e_openai.py http://127.0.0.1:PORT

Checks that the SDK receives the full text, the usage when it asks for it, and no usage
chunk when it does not (the gateway asks the upstream for usage anyway, for its own report,
and hides the extra chunk).
"""

import sys

from openai import OpenAI

base = sys.argv[1].rstrip("/")
client = OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0, timeout=30)
messages = [{"role": "user", "content": "Tell me about server-sent events."}]

# The reference text: the same request without streaming.
reference = client.chat.completions.create(model="gpt-mock", messages=messages, stream=False)
expected = reference.choices[0].message.content
assert expected, "the non-streaming answer has text"


def collect(**kwargs):
    text, usages, empty_choice_chunks, chunks = "", [], 0, 0
    for chunk in client.chat.completions.create(model="gpt-mock", messages=messages, stream=True, **kwargs):
        chunks += 1
        if chunk.usage is not None:
            usages.append(chunk.usage)
        if not chunk.choices:
            empty_choice_chunks += 1
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
    return text, usages, empty_choice_chunks, chunks


text, usages, empty, chunks = collect(stream_options={"include_usage": True})
assert text == expected, f"streamed text differs: {text!r} vs {expected!r}"
assert len(usages) == 1, f"expected one usage chunk, got {len(usages)}"
assert usages[0].completion_tokens == reference.usage.completion_tokens, usages[0]
assert usages[0].prompt_tokens > 0
print(f"with include_usage: {chunks} chunks, text ok, usage {usages[0].prompt_tokens}+{usages[0].completion_tokens}")

text, usages, empty, chunks = collect()
assert text == expected, f"streamed text differs: {text!r} vs {expected!r}"
assert not usages, f"the client did not ask for usage but got {usages}"
assert empty == 0, f"the injected usage-only chunk reached the client ({empty} chunks without choices)"
print(f"without include_usage: {chunks} chunks, text ok, no usage chunk")

print("openai sdk: ok")
