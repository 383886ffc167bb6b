"""The official openai Python SDK against the relay: chat (plain, streamed, with tools and a tool
result, a streamed tool call), the model list, and a bad key.

Run by crates/claude-relay/tests/it/clients.rs with RELAY_URL, RELAY_KEY and MODELS (comma-separated:
each is served by a different kind of account) set. The mock upstreams answer
`MOCK_OK from <model>.`, a Bash tool call for `USE_TOOL:Bash NONCE-<n>`, and `TOOL_DONE: <result>`
after a tool result.
"""

import json
import os
import sys

import openai

url = os.environ["RELAY_URL"]
key = os.environ["RELAY_KEY"]
models = os.environ["MODELS"].split(",")
tools = [
    {
        "type": "function",
        "function": {
            "name": "Bash",
            "description": "Run a shell command",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}, "description": {"type": "string"}},
                "required": ["command"],
            },
        },
    }
]
messages = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "hello from the SDK"},
]

for index, model in enumerate(models):
    # The native path and the /openai alias, in turn.
    base = f"{url}/v1" if index % 2 == 0 else f"{url}/openai/v1"
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)

    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=32)
    assert reply.choices[0].message.content == f"MOCK_OK from {model}.", reply
    assert reply.choices[0].finish_reason == "stop", reply
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0, reply.usage

    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=32,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text == f"MOCK_OK from {model}.", text
    assert usage is not None and usage.completion_tokens > 0, usage

    ask = [{"role": "user", "content": "USE_TOOL:Bash NONCE-py1"}]
    called = client.chat.completions.create(model=model, messages=ask, tools=tools, max_tokens=64)
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls", called
    call = choice.message.tool_calls[0]
    assert call.function.name == "Bash", call
    assert json.loads(call.function.arguments)["command"] == "echo TOOLRESULT-py1", call

    answered = client.chat.completions.create(
        model=model,
        messages=ask
        + [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": "Bash", "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "TOOLRESULT-py1"},
        ],
        tools=tools,
        max_tokens=64,
    )
    assert answered.choices[0].message.content == "TOOL_DONE: TOOLRESULT-py1", answered

    # A streamed tool call: the arguments arrive in pieces and assemble to the call.
    streamed = client.chat.completions.create(
        model=model, messages=ask, tools=tools, max_tokens=64, stream=True
    )
    name, arguments, finish = "", "", None
    for chunk in streamed:
        assert chunk.usage is None, "usage was not asked for"
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert name == "Bash" and finish == "tool_calls", (name, finish)
    assert json.loads(arguments)["command"] == "echo TOOLRESULT-py1", arguments

    listed = [m.id for m in client.models.list().data]
    assert model in listed or model.rsplit("-", 1)[0] in listed, listed

bad = openai.OpenAI(base_url=f"{url}/v1", api_key="cr_not_a_real_key", max_retries=0)
try:
    bad.chat.completions.create(model=models[0], messages=messages)
except openai.AuthenticationError as error:
    assert error.status_code == 401
    assert error.body["code"] == "invalid_api_key", error.body
else:
    sys.exit("a bad key was accepted")

print("openai SDK: all calls passed")
