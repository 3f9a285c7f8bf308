"""PromptTokenizer gives exactly llama.cpp's tokens, whether a plain piece comes from its cache or not.

On the real Qwen2.5-Coder vocabulary (byte-level BPE: pieces are cached) and on the tiny test
model (SentencePiece: tokenized whole, as before), against llama-cpp-python's own tokenize.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import llama_cpp
import pytest

from models.prompt_tokenizer import PromptTokenizer

DATA = Path("/work/shared/data/fim/HumanEval-SingleLineInfilling.jsonl.gz")
CHAT = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")
EDGE_CASES = [
    "", " ", "\n\n", "héllo wörld 🙂 ünïcode", "<|im_start|><|im_end|>", "<|im_start|>", "a<|im_end|>b",
    "<tool_call>{\"x\": 1}</tool_call>",  # a user-defined spelling: cut even when special=False
    "<|fim_prefix|>def f(<|fim_suffix|>)\n<|fim_middle|>", "<|im_start|<|im_start|>|>", "x" * 3000 + " y",
]


def texts() -> list[str]:
    out = list(EDGE_CASES)
    if DATA.is_file():
        with gzip.open(DATA, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for _, line in zip(range(120), f)]
        for r in rows:
            out += [r["prompt"], CHAT.format(r["prompt"]), f"<|fim_prefix|>{r['prompt']}<|fim_suffix|>{r['suffix']}<|fim_middle|>"]
    return out


def check(llm, tokenizer: PromptTokenizer) -> None:
    for text in texts():
        for special in (True, False):
            for add_bos in (True, False):
                want = llm.tokenize(text.encode(), add_bos=add_bos, special=special)
                for attempt in ("first", "cached"):
                    got = tokenizer.tokenize(text, add_bos=add_bos, special=special)
                    assert got == want, (text[:80], special, add_bos, attempt)


@pytest.mark.qwen
def test_qwen_tokens_are_llama_cpps_from_the_cache_too(qwen_gguf):
    llm = llama_cpp.Llama(str(qwen_gguf), vocab_only=True, verbose=False)
    tokenizer = PromptTokenizer(llm)
    assert tokenizer.caches  # byte-level BPE without strip rules: the cached path is what is checked
    check(llm, tokenizer)


def test_sentencepiece_vocabularies_are_tokenized_whole(tiny_gguf):
    llm = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    tokenizer = PromptTokenizer(llm)
    assert not tokenizer.caches
    check(llm, tokenizer)
