"""The official openai Python SDK's Responses API against the relay: a plain response, a streamed
one, a function call and its result, and a bad key.

Run by crates/claude-relay/tests/it/codex.rs with RELAY_URL, RELAY_KEY and MODEL set. The mock
upstream answers `MOCK_OK from <model>.`, a `Bash` function call for `USE_TOOL:Bash NONCE-<n>`,
and `TOOL_DONE: <output>` after a function call's output.
"""

import json
import os

import openai

url = os.environ["RELAY_URL"]
key = os.environ["RELAY_KEY"]
model = os.environ["MODEL"]
tools = [
    {
        "type": "function",
        "name": "Bash",
        "description": "Run a shell command",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    }
]

for base in (f"{url}/v1", f"{url}/openai/v1"):
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)

    reply = client.responses.create(model=model, input="hello from the SDK", max_output_tokens=32)
    assert reply.output_text == f"MOCK_OK from {model}.", reply
    assert reply.status == "completed", reply
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0, reply.usage

    text, completed = "", None
    with client.responses.stream(model=model, input="hello again", max_output_tokens=32) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                text += event.delta
            elif event.type == "response.completed":
                completed = event.response
    assert text == f"MOCK_OK from {model}.", text
    assert completed is not None and completed.usage.output_tokens > 0, completed

    ask = [{"role": "user", "content": "USE_TOOL:Bash NONCE-py2"}]
    called = client.responses.create(model=model, input=ask, tools=tools)
    call = next(item for item in called.output if item.type == "function_call")
    assert call.name == "Bash", call
    assert json.loads(call.arguments)["command"] == "echo TOOLRESULT-py2", call

    answered = client.responses.create(
        model=model,
        input=ask
        + [
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "TOOLRESULT-py2"},
        ],
        tools=tools,
    )
    assert answered.output_text == "TOOL_DONE: TOOLRESULT-py2", answered

bad = openai.OpenAI(base_url=f"{url}/v1", api_key="cr_not-a-key", max_retries=0)
try:
    bad.responses.create(model=model, input="hi")
except openai.AuthenticationError as error:
    assert "invalid relay key" in str(error), error
else:
    raise AssertionError("a bad key was accepted")
print("ok")
