"""Request bodies of the OpenAI-compatible API and the lab's own routes, with the server's limits.

The limits are part of the schema (and so of /openapi.json): a request outside them is answered 422
before any model runs; a body over ``MAX_BODY_BYTES`` or messages over ``MAX_TOTAL_CHARS`` get 413.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from heredity.loop import Check, LoopConfig

MAX_BODY_BYTES = 1_000_000
MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 16_000
MAX_TOTAL_CHARS = 48_000
MAX_TOKENS = 2048
DEFAULT_MAX_TOKENS = 256
MAX_N = 8
MAX_TOP_LOGPROBS = 20
MAX_PROMPTS = 64
MAX_PROMPT_TOKENS = 8192
MAX_EMBED_INPUTS = 256
MAX_STOP = 4
MAX_STOP_CHARS = 64
CONV_PATTERN = r"^c-[0-9a-f]{16}$"

ModelName = Annotated[
    str, Field(min_length=1, max_length=200, description="a name or id from GET /v1/models")
]
Stop = (
    str
    | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP)
    ]
    | None
)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str = Field(max_length=MAX_MESSAGE_CHARS)


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    arguments: str = Field("{}", max_length=MAX_MESSAGE_CHARS, description="a JSON object, as text")

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, v: str) -> str:
        import json

        try:
            ok = isinstance(json.loads(v), dict)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise ValueError('arguments must be a JSON object written as text, e.g. \'{"city": "Paris"}\'')
        return v


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=64)
    type: Literal["function"] = "function"
    function: FunctionCall


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"] | None = Field(
        None,
        description=(
            "accepted and meaningless: lm-evaluation-harness's chat client marks every message with it"
        ),
    )

    def text(self) -> str:
        c = getattr(self, "content", None)
        if c is None:
            return ""
        return c if isinstance(c, str) else "".join(p.text for p in c)

    def plain(self) -> dict:
        out = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if getattr(self, "tool_calls", None):
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if getattr(self, "tool_call_id", None):
            out["tool_call_id"] = self.tool_call_id
        return out


Content = (
    Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)] | Annotated[list[TextPart], Field(max_length=32)]
)


class SystemMessage(_Message):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = Field(None, max_length=64)


class UserMessage(_Message):
    role: Literal["user"]
    content: Content
    name: str | None = Field(None, max_length=64)


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: Content | None = Field(None, description="may be null when the turn holds tool_calls")
    name: str | None = Field(None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(None, max_length=16, description="the calls this turn made")

    @model_validator(mode="after")
    def _content_or_calls(self):
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Message):
    role: Literal["tool"]
    content: Content
    tool_call_id: str = Field(max_length=64, description="the id of the call this answers")


ChatMessage = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class SamplingFields(BaseModel):
    # a field this server does not implement is refused (400, ``param`` naming it), never silently ignored
    model_config = ConfigDict(extra="forbid")
    model: ModelName
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    stop: Stop = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=200)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, max_length=300, description="token id (as a string) → a bias added to its logit, -100..100"
    )
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, v):
        for k in v or {}:
            if not k.isdigit():
                raise ValueError(f"logit_bias keys are token ids written as strings; {k!r} is not one")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v):
        if isinstance(v, str):
            if not v or len(v) > MAX_STOP_CHARS:
                raise ValueError(f"a stop string must have 1 to {MAX_STOP_CHARS} characters")
            return [v]
        return v


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = Field(None, max_length=4000)
    parameters: dict | None = None
    strict: bool | None = Field(
        None, description="true: no properties beyond the schema's (additionalProperties false)"
    )


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(None, max_length=2000)
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = Field(
        None, description="output always validates (constrained decoding), strict or not"
    )


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    conversation_id: str | None = Field(
        None,
        pattern=CONV_PATTERN,
        description="heredity: save this turn and the answer into a stored conversation",
    )
    response_format: ResponseFormat | None = Field(
        None,
        description=(
            "json_object / json_schema: constrained decoding guarantees output that parses (and validates)"
        ),
    )
    tools: list[Tool] | None = Field(None, max_length=64)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None,
        description=(
            "required or a named function: constrained decoding guarantees a call whose arguments validate"
        ),
    )
    parallel_tool_calls: bool | None = Field(
        None, description="with required/named: up to four calls (default) or one"
    )


TokenId = Annotated[int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_PROMPT_TOKENS)]


class CompletionRequest(SamplingFields):
    prompt: (
        Annotated[str, Field(max_length=MAX_TOTAL_CHARS)]
        | Annotated[
            list[Annotated[str, Field(max_length=MAX_TOTAL_CHARS)]],
            Field(min_length=1, max_length=MAX_PROMPTS),
        ]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    ) = Field(
        description=(
            "text, a list of texts, token ids, or a list of token-id lists (ids are used as given: no BOS "
            "is added)"
        )
    )
    max_tokens: int | None = Field(
        None, ge=0, le=MAX_TOKENS, description="0: score the prompt only (with echo)"
    )
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = Field(None, description="refused when set: insertion is not implemented")


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: ModelName
    input: (
        Annotated[str, Field(max_length=MAX_TOTAL_CHARS)]
        | Annotated[
            list[Annotated[str, Field(max_length=MAX_TOTAL_CHARS)]],
            Field(min_length=1, max_length=MAX_EMBED_INPUTS),
        ]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_EMBED_INPUTS)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        None, ge=1, description="must equal the model's own size (no truncation is done)"
    )
    user: str | None = Field(None, max_length=200)


class LoadAdapter(BaseModel):
    """vLLM's runtime LoRA loading request (``POST /v1/load_lora_adapter``), for adapters in this server's
    store."""

    model_config = ConfigDict(extra="forbid")
    lora_name: ModelName
    lora_path: str = Field(
        min_length=1, max_length=4096, description="the adapter's directory in this server's store"
    )
    load_inplace: bool = Field(False, description="replace an adapter already loaded under lora_name")


class UnloadAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: ModelName
    lora_int_id: int | None = Field(None, description="accepted for vLLM compatibility; the name decides")


class NewConversation(BaseModel):
    model: ModelName
    system_prompt: str | None = Field(None, max_length=MAX_MESSAGE_CHARS)
    title: str = Field("", max_length=200)
    user: str | None = Field(
        None,
        max_length=128,
        pattern=r"^[\w.@:-]+$",
        description="who holds the conversation (usage insights count distinct users)",
    )


class Feedback(BaseModel):
    rating: Literal[-1, 0, 1] | None = Field(None, description="+1 thumbs up, -1 thumbs down, 0 clears")
    better: str | None = Field(
        None, max_length=MAX_MESSAGE_CHARS, description="a better answer, written by the user"
    )


class ExportRequest(BaseModel):
    name: str = Field("chat-feedback", min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ExploreRequest(BaseModel):
    model: ModelName
    prompt: str = Field(max_length=MAX_MESSAGE_CHARS)
    chat: bool = Field(True, description="wrap the prompt as a user message in the chat template")
    system_prompt: str | None = Field(None, max_length=MAX_MESSAGE_CHARS)
    tokens: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, max_length=512, description="token ids chosen so far, appended after the prompt"
    )
    top_k: int = Field(10, ge=1, le=50)
    layer: int | None = Field(None, ge=0, le=1000)
    head: int | None = Field(None, ge=0, le=1000)


# ---- prompt templates (heredity.prompts; the template's own checks run on the server's prompt threads) ----

MAX_PROMPT_TEMPLATE_CHARS = 200_000  # per text or message content (heredity.prompts.MAX_TEMPLATE_CHARS)
MAX_PROMPT_MESSAGES = 64
MAX_PROMPT_VARIABLES = 64
PromptRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=300,
        description=(
            "p-ID (or a unique prefix), NAME, NAME:N, NAME@ALIAS, prompts:/NAME/N or prompts:/NAME@ALIAS"
        ),
    ),
]


class PromptMessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_TEMPLATE_CHARS, description="Jinja2 text")


class PromptVariableBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["str", "int", "float", "bool", "list"] = "str"
    required: bool = True
    default: Any = Field(
        None, description="of the variable's type; a variable with a default is never missing"
    )
    description: str = Field("", max_length=2000)


class NewPrompt(BaseModel):
    """``POST /api/prompts``: a template as ``heredity.prompts.PromptTemplate`` takes it (text or messages,
    never both). The template's own checks (Jinja2 syntax, undeclared variables, defaults of the wrong type,
    reads of Python internals) answer 400 in one line."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    text: str | None = Field(None, max_length=MAX_PROMPT_TEMPLATE_CHARS, description="Jinja2 text")
    messages: list[PromptMessageBody] | None = Field(None, min_length=1, max_length=MAX_PROMPT_MESSAGES)
    variables: dict[str, PromptVariableBody] = Field(default_factory=dict, max_length=MAX_PROMPT_VARIABLES)
    description: str = Field("", max_length=2000)


class RenderPromptRequest(BaseModel):
    """``POST /api/prompts/render``: the template ``ref`` names, rendered with ``variables``."""

    model_config = ConfigDict(extra="forbid")
    ref: PromptRef
    variables: dict[str, Any] = Field(
        default_factory=dict, max_length=MAX_PROMPT_VARIABLES, description="values by variable name"
    )


class MoveAlias(BaseModel):
    """``POST /api/prompts/{name}/aliases/{alias}``: point the alias at the version ``ref`` names."""

    model_config = ConfigDict(extra="forbid")
    ref: PromptRef | Annotated[int, Field(ge=1)] = Field(
        description="a reference to one of the template's versions, or a version number"
    )


# ---- the heredity loop (heredity.loop: feedback → adapter → evaluation → the alias) and the arena ----------

ALIAS_PATTERN = r"^[a-z][a-z0-9._-]{0,63}$"


class LoopCheck(Check):
    model_config = ConfigDict(extra="forbid")


class LoopRound(LoopConfig):
    """``POST /api/loop/rounds``: one round's settings, every field of ``heredity.loop.LoopConfig`` and no
    other (an unknown field is refused). ``base`` left out: the model the alias started from when it has
    one."""

    model_config = ConfigDict(extra="forbid")
    checks: list[LoopCheck] = Field(
        default_factory=list, description="regexes an answer should match; the first decides promotion"
    )


class EmptyBody(BaseModel):
    """A body with nothing in it (``{}``): state-changing routes take JSON, so the server's checks cover
    them."""

    model_config = ConfigDict(extra="forbid")


class PromoteModel(BaseModel):
    """``POST /api/loop/aliases/{alias}/promote``: point the alias at ``model`` by hand."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(
        min_length=1,
        max_length=200,
        description="a model (m-…) or adapter (a-…) id, a unique prefix, or alias",
    )


class ArenaRequest(BaseModel):
    """``POST /api/arena``: one prompt, answered by two models; the answers come back in a shuffled order
    without saying which model wrote which."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    models: list[ModelName] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="the two models; left out: where the alias points now and where it pointed before (or "
        "the model it started from)",
    )
    alias: str = Field("lab-latest", pattern=ALIAS_PATTERN)
    max_tokens: int = Field(128, ge=1, le=MAX_TOKENS)
    temperature: float = Field(0.0, ge=0, le=2, description="0: greedy")


class ArenaVote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    winner: Literal["A", "B"]
