"""The official anthropic Python SDK against the relay: every call a user makes, and a bad key.

Run by crates/claude-relay/tests/it/clients.rs with RELAY_URL and RELAY_KEY set.
"""

import os
import sys

import anthropic

url = os.environ["RELAY_URL"]
key = os.environ["RELAY_KEY"]
client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
model = "claude-sonnet-4-5-20250929"
# The model the upstream answers as: the account may map the client's model to another.
reply_model = os.environ.get("REPLY_MODEL", model)
messages = [{"role": "user", "content": "hello from the SDK"}]

message = client.messages.create(model=model, max_tokens=32, messages=messages)
assert message.content[0].text == f"MOCK_OK from {reply_model}.", message
assert message.usage.input_tokens > 0, message.usage

with client.messages.stream(model=model, max_tokens=32, messages=messages) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert text == f"MOCK_OK from {reply_model}.", text
assert final.usage.output_tokens > 0, final.usage

counted = client.messages.count_tokens(model=model, messages=messages)
assert counted.input_tokens > 0, counted

models = client.models.list()
ids = [m.id for m in models.data]
assert "claude-sonnet-4-5" in ids, ids

bad = anthropic.Anthropic(base_url=url, api_key="cr_not_a_real_key", max_retries=0)
try:
    bad.messages.create(model=model, max_tokens=8, messages=messages)
except anthropic.AuthenticationError as error:
    assert error.status_code == 401
    assert error.body["error"]["type"] == "authentication_error", error.body
else:
    sys.exit("a bad key was accepted")

print("anthropic SDK: all calls passed")
