"""Prompt reuse across an agent session's turns, on the real Qwen weights through the real server
and the real `openai` client: each turn evaluates only its new tokens, also when another client
takes the model in between, and the answers are the ones an uninterrupted session gets."""

from __future__ import annotations

import pytest

from models.llama_backend import EXACT_ROW_GROUP

pytestmark = pytest.mark.qwen

SYSTEM = ("You are a coding agent in a terminal. Follow the repository's conventions, keep changes small, run the "
          "tests after every edit, and explain what you changed in one short paragraph. ") * 12
TURNS = ["Write a Python function that reverses a string.", "Now make it skip whitespace.",
         "Add a docstring to it."]
OTHER = [{"role": "system", "content": "You translate English into French, word for word. " * 30},
         {"role": "user", "content": "Good morning, how are you?"}]


@pytest.fixture(scope="module")
def client(qwen_gguf, tmp_path_factory):
    openai = pytest.importorskip("openai")
    from server_harness import isolated_env, live_server

    from models.catalog import catalog_from_files
    from router.app import create_app
    from router.settings import Settings

    tmp = tmp_path_factory.mktemp("qwen-reuse")
    with isolated_env(tmp):
        catalog = catalog_from_files({label: qwen_gguf for label in ("code_edit", "fim", "chat", "instruct")},
                                     n_ctx=4096)
        with live_server(create_app(Settings(idle_ttl_s=0), catalog=catalog)) as srv:
            yield openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)


def session(client, interrupt_before: int | None = None) -> list[tuple[str, int, int]]:
    """The three turns; each as (answer, prompt tokens, tokens taken from a cache)."""
    messages = [{"role": "system", "content": SYSTEM}]
    out = []
    for i, user in enumerate(TURNS, start=1):
        if i == interrupt_before:
            client.chat.completions.create(model="auto", messages=OTHER, max_tokens=8, temperature=0)
        messages.append({"role": "user", "content": user})
        answer = client.chat.completions.create(model="auto", messages=messages, max_tokens=24, temperature=0)
        text = answer.choices[0].message.content
        usage = answer.usage
        out.append((text, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens))
        messages.append({"role": "assistant", "content": text})
    return out


def test_each_turn_evaluates_only_what_is_new_even_with_a_client_in_between(client):
    first = session(client)
    (_, p1, c1), (_, p2, c2), (_, p3, c3) = first
    assert p1 > 300 and p1 - c1 > 300  # the system prompt was evaluated once, here
    # Turn N+1 adds turn N's answer (already in the cache: it was generated there) and the new
    # user message: a few dozen tokens, not the whole conversation again.
    assert p2 - c2 <= 24 and p3 - c3 <= 24

    again = session(client, interrupt_before=3)
    assert [text for text, _, _ in again] == [text for text, _, _ in first]
    (_, _, a1), _, (_, q3, a3) = again
    # The same first turn again: all but a few tokens come from the cache, restarted at a row
    # group so that it answers exactly as the first time (models/llama_backend.prompt_slices).
    assert first[0][1] - a1 <= 2 * EXACT_ROW_GROUP
    assert q3 - a3 <= 24  # the other client's chat did not make turn 3 evaluate the session again
