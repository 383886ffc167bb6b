"""The official google-genai Python SDK against the relay: a plain generation, a streamed one, a
token count, and a bad key.

Run by crates/claude-relay/tests/it/gemini.rs with RELAY_URL, RELAY_KEY and MODEL set. The mock
upstream answers `MOCK_OK from <model>.` and counts `3 + body bytes / 64` prompt tokens.
"""

import os

from google import genai
from google.genai import errors, types

url = os.environ["RELAY_URL"]
key = os.environ["RELAY_KEY"]
model = os.environ["MODEL"]
options = types.HttpOptions(base_url=url, retry_options=types.HttpRetryOptions(attempts=1))
client = genai.Client(api_key=key, http_options=options)

reply = client.models.generate_content(
    model=model,
    contents="hello from the SDK",
    config=types.GenerateContentConfig(max_output_tokens=64, temperature=0.2),
)
assert reply.text == f"MOCK_OK from {model}.", reply
assert reply.usage_metadata.prompt_token_count > 0, reply.usage_metadata
assert reply.candidates[0].finish_reason == types.FinishReason.STOP, reply

text, last = "", None
for chunk in client.models.generate_content_stream(model=model, contents="hello again"):
    text += chunk.text or ""
    last = chunk
assert text == f"MOCK_OK from {model}.", text
assert last.usage_metadata.candidates_token_count > 0, last

counted = client.models.count_tokens(model=model, contents="count these words")
assert counted.total_tokens > 0, counted

bad = genai.Client(api_key="cr_not-a-key", http_options=options)
try:
    bad.models.generate_content(model=model, contents="hi")
except errors.ClientError as error:
    assert error.code == 400 and "API_KEY_INVALID" in str(error), error
else:
    raise AssertionError("a bad key was accepted")
print("ok")
