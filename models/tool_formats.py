"""How each model family writes tool calls: detected from its chat template, with the grammar that constrains them.

Detection follows llama.cpp's common/chat.cpp (`common_chat_templates_apply_jinja`): the
template source is sniffed for each family's markers, first match wins. A template that renders
`tools` but has no known call syntax gets llama.cpp's generic JSON form (`{"tool_call": ...}` or
`{"response": ...}`, prompted by a system message and always grammar-constrained); a template that
never mentions tools cannot take them. The grammars follow llama.cpp's per-family handlers: the
family's own wrapper around `{"name": const, "arguments": schema}` for each declared tool.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import regex

from models.chat_messages import openai_tools
from models.grammar import GrammarBuilder, relaxed
from models.request import Tool, ToolChoice


@dataclass(frozen=True, slots=True)
class ToolFormat:
    """One family's call syntax. `markers` must reach the parser as text (llama.cpp's preserved
    tokens); `trigger` is the text that starts a call anywhere in a reply (a lazy grammar's trigger)."""

    name: str
    markers: tuple[str, ...] = ()
    trigger: str | None = None
    args_key: str = "arguments"


HERMES = ToolFormat("hermes", ("<tool_call>", "</tool_call>"), "<tool_call>")
QWEN3_CODER = ToolFormat("qwen3_coder", ("<tool_call>", "</tool_call>"), "<tool_call>")
LLAMA3 = ToolFormat("llama3", ("<|python_tag|>",), None, args_key="parameters")
MISTRAL = ToolFormat("mistral", ("[TOOL_CALLS]",), "[TOOL_CALLS]")
MISTRAL_ARGS = ToolFormat("mistral_args", ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"), "[TOOL_CALLS]")
GENERIC = ToolFormat("generic")
FORMATS = {f.name: f for f in (HERMES, QWEN3_CODER, LLAMA3, MISTRAL, MISTRAL_ARGS, GENERIC)}

_MENTIONS_TOOLS = regex.compile(r"\btools\b")


def detect_tool_format(template: str) -> ToolFormat | None:
    """The family whose calls this template renders, or None when it cannot take tools at all."""
    if "<tool_call>" in template and "<function=" in template and "<parameter=" in template:
        return QWEN3_CODER
    if "<tool_call>" in template:
        return HERMES
    if "<|start_header_id|>ipython<|end_header_id|>" in template or (
            "<|start_header_id|>" in template and "<|python_tag|>" in template):
        return LLAMA3
    if "[TOOL_CALLS]" in template:
        return MISTRAL_ARGS if "[ARGS]" in template else MISTRAL
    if _MENTIONS_TOOLS.search(template):
        return GENERIC
    return None


def mistral_ids(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mistral templates raise on ids that are not 9 alphanumerics: map every call id (and its result's) onto one."""
    def short(call_id: str) -> str:
        digest = hashlib.sha256(call_id.encode()).digest()
        return "".join(_ALNUM[b % len(_ALNUM)] for b in digest[:9])

    out = []
    for m in rendered:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "id": short(c["id"])} for c in m["tool_calls"]]
        if m.get("tool_call_id"):
            m["tool_call_id"] = short(m["tool_call_id"])
        out.append(m)
    return out


_ALNUM = string.ascii_letters + string.digits


def generic_system_prompt(tools: Sequence[Tool], choice: ToolChoice, response_schema: dict[str, Any] | None) -> str:
    """llama.cpp's generic handler's instruction, for templates with no tool syntax of their own."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in openai_tools(tools))
    answer = ("" if choice.mode in ("required", "function") else
              ' or {"response": ' + (json.dumps(response_schema) if response_schema else '"your answer"') + "}")
    return ("You can call these tools:\n" + listed + "\n\nRespond with one JSON object only: "
            '{"tool_call": {"name": "<tool name>", "arguments": {...}}}' + answer + ".")


@dataclass(frozen=True, slots=True)
class ToolGrammar:
    """A GBNF text and how it applies: from the first token, or lazily once `trigger` is generated."""

    gbnf: str
    lazy: bool
    trigger: str | None = None


WS = "[ \\t\\n]? [ \\t\\n]?"
XML_TEXT = '( [^<] | "<" [^/] )*'


def tool_grammar(fmt: ToolFormat, tools: Sequence[Tool], choice: ToolChoice, parallel: bool,
                 response_schema: dict[str, Any] | None = None) -> ToolGrammar | None:
    """The grammar for this request's calls; None when calls are parsed unconstrained (auto without a trigger)."""
    if choice.mode == "none" or not tools:
        return None
    forced = choice.mode in ("required", "function")
    chosen = [t for t in tools if choice.mode != "function" or t.name == choice.name]
    if fmt is GENERIC:
        return ToolGrammar(_generic_grammar(chosen, forced, parallel, response_schema), lazy=False)
    if not forced and fmt.trigger is None:
        return None  # Llama 3 calls open the reply with bare JSON: nothing to trigger on
    b = GrammarBuilder()
    b.rule("ws", WS)
    calls = []
    for i, tool in enumerate(chosen):
        args = b.schema(relaxed(tool.parameters), f"tool{i}-args", f"tools[{i}].function.parameters")
        name = b.literal(tool.name)
        if fmt is QWEN3_CODER:
            body = f'"<tool_call>\\n<function=" {name} ">\\n" {_xml_params(b, tool, i)} "</function>\\n</tool_call>"'
        elif fmt is MISTRAL_ARGS:
            body = f'"[TOOL_CALLS]" {name} "[ARGS]" {args}'
        else:
            obj = (f'"{{" ws "\\"name\\"" ws ":" ws {b.literal(json.dumps(tool.name))} ws "," ws '
                   f'"\\"{fmt.args_key}\\"" ws ":" ws {args}')
            if fmt is MISTRAL:
                body = obj + ' ws "," ws "\\"id\\"" ws ":" ws "\\"" [a-zA-Z0-9]{9} "\\"" ws "}"'
            else:
                body = obj + ' ws "}"'
            if fmt is HERMES:
                body = f'"<tool_call>" ws {body} ws "</tool_call>"'
        calls.append(b.rule(f"call{i}", body))
    call = b.rule("call", " | ".join(calls))
    if fmt is MISTRAL:
        root = f'"[TOOL_CALLS]" ws "[" ws {call} ' + (f'( ws "," ws {call} )*' if parallel else "") + ' ws "]"'
    elif fmt is LLAMA3:
        root = call
    else:
        root = f"{call} ( ws {call} )*" if parallel else call
    return ToolGrammar(b.text(root), lazy=not forced, trigger=None if forced else fmt.trigger)


def _xml_params(b: GrammarBuilder, tool: Tool, i: int) -> str:
    """Qwen3-Coder's `<parameter=K>\\nVALUE\\n</parameter>` lines, in schema order; strings are raw text."""
    props = tool.parameters.get("properties") or {}
    required = set(tool.parameters.get("required") or ())
    xml_text = b.rule("xml-text", XML_TEXT)
    parts = []
    for j, (key, schema) in enumerate(props.items()):
        schema = relaxed(schema) if isinstance(schema, dict) else {}
        value = xml_text if schema.get("type") == "string" else b.schema(schema, f"tool{i}-p{j}", f"tools[{i}]")
        line = f'"<parameter=" {b.literal(key)} ">\\n" {value} "\\n</parameter>\\n"'
        parts.append(line if key in required else f"( {line} )?")
    return " ".join(parts) or '""'


def _generic_grammar(tools: Sequence[Tool], forced: bool, parallel: bool, response_schema: dict[str, Any] | None) -> str:
    b = GrammarBuilder()
    b.rule("ws", WS)
    calls = []
    for i, tool in enumerate(tools):
        args = b.schema(relaxed(tool.parameters), f"tool{i}-args", f"tools[{i}].function.parameters")
        calls.append(b.rule(f"call{i}", f'"{{" ws "\\"name\\"" ws ":" ws {b.literal(json.dumps(tool.name))} ws "," ws '
                                        f'"\\"arguments\\"" ws ":" ws {args} ws "}}"'))
    call = b.rule("call", " | ".join(calls))
    if parallel:
        branch = f'"\\"tool_calls\\"" ws ":" ws "[" ws {call} ( ws "," ws {call} )* ws "]"'
    else:
        branch = f'"\\"tool_call\\"" ws ":" ws {call}'
    alternatives = [branch]
    if not forced:
        answer = b.schema(response_schema or {"type": "string"}, "response", "response_format")
        alternatives.append(f'"\\"response\\"" ws ":" ws {answer}')
    return b.text('"{" ws ( ' + " | ".join(alternatives) + ' ) ws "}"')
