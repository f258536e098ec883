"""Checks that the official `openai` and `anthropic` Python SDKs parse the
fake's answers, stream and non-stream. Not run by `cargo test`.

    cargo run -p fake_deepseek -- --addr 127.0.0.1:9000 &
    python3 -m venv /tmp/fakevenv && /tmp/fakevenv/bin/pip install openai anthropic
    /tmp/fakevenv/bin/python crates/fake_deepseek/tests/sdk_check.py [http://127.0.0.1:9000]
"""

import sys

import anthropic
from openai import OpenAI

ROOT = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9000"
SCRIPT = {"_fake": {"reply": "one two three", "chunks": 3, "cache_hit_tokens": 4}}
HI = [{"role": "user", "content": "hi"}]


def check_openai():
    client = OpenAI(base_url=ROOT + "/v1", api_key="sk-fake", max_retries=0)

    chat = client.chat.completions.create(model="deepseek-flash", messages=HI)
    assert chat.choices[0].message.content.startswith("Hello!")
    assert chat.usage.prompt_tokens == 11

    whole = client.responses.create(model="deepseek-v4-pro", input="hi", extra_body=SCRIPT)
    assert whole.output_text == "one two three", whole.output_text
    assert [item.type for item in whole.output] == ["reasoning", "message"]
    assert whole.usage.input_tokens_details.cached_tokens == 4
    assert whole.usage.output_tokens_details.reasoning_tokens > 0

    events = list(client.responses.create(model="deepseek-flash", input="hi", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"

    with client.responses.stream(model="deepseek-flash", input="hi", extra_body=SCRIPT) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == "one two three", (text, final.output_text)
    print("openai: chat, responses.create (stream and not), responses.stream: ok")


def check_anthropic():
    client = anthropic.Anthropic(base_url=ROOT + "/anthropic", api_key="sk-fake", max_retries=0)
    args = dict(max_tokens=256, messages=HI, extra_body=SCRIPT)

    message = client.messages.create(model="claude-opus-4-1", **args)
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[1].text == "one two three"
    assert message.model == "claude-opus-4-1"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (7, 4)

    with client.messages.stream(model="claude-sonnet-4-5", **args) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three", text
    assert final.usage.output_tokens == message.usage.output_tokens
    assert final.usage.cache_read_input_tokens == 4
    assert final.stop_reason == "end_turn"

    plain = client.messages.create(
        model="deepseek-flash", thinking={"type": "disabled"}, max_tokens=64, messages=HI
    )
    assert [block.type for block in plain.content] == ["text"]

    assert client.messages.count_tokens(model="claude-sonnet-4-5", messages=HI).input_tokens == 11

    try:
        client.messages.create(model="deepseek-chat", max_tokens=8, messages=HI)
        raise AssertionError("a retired model must be refused")
    except anthropic.BadRequestError as error:
        assert error.body["error"]["type"] == "invalid_request_error"
    print("anthropic: messages.create, messages.stream, count_tokens, errors: ok")


if __name__ == "__main__":
    check_openai()
    check_anthropic()
