"""An agent loop against `heredity serve`: the official openai client, a Python function as a tool.

    heredity serve --model smollm2-135m-instruct &
    python docs/examples/agent_loop.py

Turn 1 forces a call (tool_choice="required": constrained decoding makes the arguments validate against the
schema, whatever the model's skill); the function runs here; turn 2 sends its result back as a tool message
and lets the model answer in words (tool_choice="none").
"""

import json

from openai import OpenAI


def get_weather(city: str, days: int) -> dict:
    return {"city": city, "days": days, "forecast": ["sunny", "cloudy", "rain"][: max(1, min(days, 3))]}


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather forecast for a city",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 40},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                },
                "required": ["city", "days"],
            },
        },
    }
]

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
messages = [{"role": "user", "content": "What will the weather be in Paris for the next 2 days?"}]
r = client.chat.completions.create(
    model="smollm2-135m-instruct",
    messages=messages,
    tools=TOOLS,
    tool_choice="required",
    parallel_tool_calls=False,
    temperature=0,
    max_tokens=80,
)
call = r.choices[0].message.tool_calls[0]
print("finish_reason:", r.choices[0].finish_reason)
print("call:", call.function.name, call.function.arguments)
result = get_weather(**json.loads(call.function.arguments))
print("result:", json.dumps(result))
messages += [
    r.choices[0].message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
]
r = client.chat.completions.create(
    model="smollm2-135m-instruct",
    messages=messages,
    tools=TOOLS,
    tool_choice="none",
    temperature=0,
    max_tokens=60,
)
print("answer:", r.choices[0].message.content)
