"""Claude Code's recorded requests (tests/data/agent_requests) with its full default tool set,
through /v1/messages/count_tokens on the real Qwen 0.5B: the prompt is rendered and the tool
grammar built exactly as for generation, without minutes of prefill. The real-CLI test in
test_agent_clis.py runs with four tools for CI time, so this is where the other 20 are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from server_harness import isolated_env, live_server

from models.catalog import catalog_from_files
from router.app import create_app
from router.settings import Settings

pytestmark = pytest.mark.qwen
DATA = Path(__file__).parent / "data" / "agent_requests"


@pytest.fixture(scope="module")
def server(qwen_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agent-requests")
    with isolated_env(tmp):
        catalog = catalog_from_files({label: qwen_gguf for label in ("code_edit", "chat", "instruct", "fim")},
                                     n_ctx=32768)
        with live_server(create_app(Settings(idle_ttl_s=0), catalog=catalog)) as srv:
            yield srv


@pytest.mark.parametrize("name", ["claude_code_messages", "claude_code_messages_turn2"])
def test_claude_codes_default_tool_set_is_accepted(server, name):
    body = json.loads((DATA / f"{name}.json").read_text())
    headers = json.loads((DATA / f"{name}.headers.json").read_text())["headers"]
    for key in ("max_tokens", "stream"):
        body.pop(key)
    sent = {k: v for k, v in headers.items() if k.lower().startswith(("anthropic-", "x-app", "user-agent"))}
    reply = httpx.post(f"{server.url}/v1/messages/count_tokens?beta=true", json=body, headers=sent, timeout=120)
    assert reply.status_code == 200, reply.text[:1000]
    assert 10_000 < reply.json()["input_tokens"] < 30_000, reply.json()
