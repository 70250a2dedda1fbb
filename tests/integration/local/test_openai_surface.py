"""What Ray Serve LLM users reach for, through Nginx with the `openai` client:
tool calling (tools with tool_choice "auto") and structured output
(response_format json_schema), streamed and not, on the real CPU engine; and
the OpenAI endpoints the README's table marks as not served.

The tiny model has random weights: it makes no deliberate tool call, so the
tool tests check the wire shape, not the model's choice. Structured output is
forced by vLLM's guided decoding whatever the weights, so its content must
parse and validate against the schema.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from support import assert_openai_error_body
from support.local_stack import API_KEY, MODEL, LocalStack, auth

pytestmark = [pytest.mark.e2e]

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                                           "confidence": {"type": "integer"}},
          "required": ["answer", "confidence"], "additionalProperties": False}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True}}


@pytest.fixture()
def client(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def check_tool_calls(tool_calls: list | None) -> None:
    for call in tool_calls or []:
        assert call.type == "function" and call.function.name
        json.loads(call.function.arguments)


def test_tools_with_auto_choice(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice="auto",
                                          max_tokens=16)
    choice = done.choices[0]
    assert done.object == "chat.completion" and done.model == MODEL
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    check_tool_calls(choice.message.tool_calls)
    assert done.usage is not None and done.usage.completion_tokens > 0


def test_tools_with_auto_choice_streamed(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER_TOOL],
                                                 tool_choice="auto", max_tokens=16, stream=True))
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished and finished[-1] in ("stop", "length", "tool_calls")


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model=MODEL, messages=ASK, response_format=JSON_SCHEMA_FORMAT,
                                          max_tokens=200)
    content = done.choices[0].message.content
    assert done.choices[0].finish_reason == "stop", content
    jsonschema.validate(json.loads(content), SCHEMA)


def test_json_schema_output_validates_streamed(client: openai.OpenAI) -> None:
    chunks = client.chat.completions.create(model=MODEL, messages=ASK, response_format=JSON_SCHEMA_FORMAT,
                                            max_tokens=200, stream=True)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(content), SCHEMA)


def test_malformed_schema_is_a_400_in_openai_shape(stack: LocalStack) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}}}
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=120, headers=auth(),
                          json={"model": MODEL, "messages": ASK, "max_tokens": 8, "response_format": bad})
    assert response.status_code == 400, response.text
    assert_openai_error_body(response.json())


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/files", "/v1/images/generations"])
def test_endpoints_not_served_answer_404_in_openai_shape(stack: LocalStack, path: str) -> None:
    """README's table: not served by Ray Serve LLM 2.60 (the Responses API is ray#55631)."""
    response = httpx.post(f"{stack.base_url}{path}", timeout=60, headers=auth(),
                          json={"model": MODEL, "input": "hi"})
    assert response.status_code == 404, response.text
    assert_openai_error_body(response.json())
