"""ai.chat: an LLM completion through the injected AI port (templates, history, rate limits
and fallback are the port's business; the node passes what the user configured)."""

from __future__ import annotations

from app.engine.nodes.base import NodeContext, NodeOutput, NodeType, port_unavailable

PARAM_NAMES = ("provider", "model", "fallback_provider", "fallback_model", "template_id",
               "system", "prompt", "conversation_key", "temperature", "max_tokens",
               "json_schema")


def run_chat(ctx: NodeContext) -> NodeOutput:
    if ctx.ports.ai is None:
        raise port_unavailable("ai.chat")
    arguments = {name: ctx.params.get(name) for name in PARAM_NAMES}
    if arguments["template_id"]:
        # The template's texts are rendered like the node's own, with the node's prompt
        # available in them as {{ prompt }}.
        template = ctx.ports.ai.template(arguments["template_id"])
        if template.get("system"):
            arguments["system"] = ctx.render(template["system"], prompt=arguments["prompt"])
        arguments["prompt"] = ctx.render(template["prompt"], prompt=arguments["prompt"])
    value = ctx.ports.ai.chat(**arguments, idempotency_key=ctx.idempotency_key,
                              credential_id=ctx.credential_id, deadline=ctx.deadline)
    return NodeOutput(value)


_NAME = {"type": "string", "minLength": 1, "maxLength": 200}

CHAT = NodeType(
    name="ai.chat", group="AI", label="AI chat",
    description="Asks a language model; outputs {text, model, usage}.",
    params_schema={
        "type": "object", "additionalProperties": False,
        "required": ["provider", "model", "prompt"],
        "properties": {
            "provider": {**_NAME, "title": "Provider",
                         "examples": ["openai", "anthropic", "mistral", "ollama"]},
            "model": {**_NAME, "title": "Model"},
            "fallback_provider": {**_NAME, "title": "Fallback provider",
                                  "description": "Used when the model keeps failing."},
            "fallback_model": {**_NAME, "title": "Fallback model"},
            "template_id": {**_NAME, "title": "Prompt template",
                            "description": "A saved prompt template to render the prompt "
                                           "into."},
            "system": {"type": "string", "title": "System prompt", "format": "textarea"},
            "prompt": {"type": "string", "minLength": 1, "title": "Prompt",
                       "format": "textarea", "description": "May use expressions."},
            "conversation_key": {**_NAME, "title": "Conversation",
                                 "description": "Messages with the same key share history, "
                                                "e.g. {{ input.user_id }}."},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 0.7,
                            "title": "Temperature"},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 32_000,
                           "default": 1024, "title": "Max tokens"},
            "json_schema": {"type": "object", "title": "Answer schema", "format": "json",
                            "description": "Ask for a JSON answer matching this schema."},
        }},
    run=run_chat)

NODE_TYPES = (CHAT,)
