"""The API contract: request bodies as pydantic models (OpenAI's chat format plus router-ml's own)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from router_ml.routers.policy import Policy
from router_ml.serve.providers.wire import message_text

AUTO = "router-ml/auto"


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict] | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    stop: str | list[str] | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    router_ml: Policy | None = None
    """router-ml's extension: the routing policy for this request (:class:`router_ml.routers.policy.Policy`);
    its fields override those of the model name."""


class RouteRequest(BaseModel):
    prompt: str | None = None
    messages: list[Message] | None = None
    policy: Policy = Field(default_factory=Policy)


def routing_prompt(messages: list[Message]) -> str:
    """What the router sees: the last user message (the question being asked now)."""
    users = [m for m in messages if m.role == "user"]
    return message_text((users or messages)[-1].content)


def parse_auto_model(name: str) -> Policy | None:
    """The policy a ``router-ml/auto[:k=v,...]`` model name asks for (``router-ml/auto:quality=0.9,max_cost=0.002``,
    ``models=a|b``), or None for a concrete model. ValueError names a malformed field."""
    if name != AUTO and not name.startswith(AUTO + ":"):
        return None
    fields = {}
    for part in filter(None, name[len(AUTO) + 1:].split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"model {name!r}: policy field {part!r} must be key=value")
        fields[key.strip()] = [m for m in value.split("|") if m] if key.strip() == "models" else value
    return Policy(**fields)
