"""A tenant over its budget, through the gateway with the official OpenAI Python SDK.

Usage: python e2e_budget.py http://127.0.0.1:PORT

The gateway runs with `--budgets FILE` allowing each tenant 2 requests per 60 s. The third
request of a tenant must raise the SDK's own `RateLimitError` (status 429, the OpenAI error
code `rate_limit_exceeded`, a `Retry-After` of about 60 s / 2 = 30 s), before any upstream
call; another tenant is not affected.
"""

import sys

import openai
from openai import OpenAI

base = sys.argv[1].rstrip("/")


def client(key):
    return OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)


messages = [{"role": "user", "content": "Hi"}]
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
