"""Write a tiny but real GGUF (llama architecture, 2 layers, byte vocabulary + FIM tokens).

It loads in milliseconds in real llama-cpp-python. Its output is gibberish: tests assert
structure (ids, finish reasons, usage, stream order), never wording.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# FIM tokens per family, as real GGUF vocabularies spell them.
FIM_TOKENS = {
    "qwen": ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"],
    "starcoder": ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<repo_name>", "<file_sep>"],
    "deepseek": ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],
    "codellama": ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"],
    "codestral": ["[PREFIX]", "[SUFFIX]", "[MIDDLE]"],
}

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def write_tiny_gguf(
    path: Path,
    *,
    fim_family: str | None = "qwen",
    n_ctx: int = 512,
    n_vocab: int = 512,
    n_embd: int = 64,
    n_layer: int = 2,
    seed: int = 0,
    chat_template: str | None = CHATML_TEMPLATE,
    architecture: str = "llama",
) -> Path:
    """Write the model to `path` and return it. Deterministic for a given seed.

    `architecture` "qwen2" writes Qwen2's attention biases too (llama.cpp requires them), so
    tests can see a header's architecture that is not llama's."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-test-" + (fim_family or "nofim"))
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_embd * 2)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_rope_dimension_count(n_embd // 4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    specials = (FIM_TOKENS.get(fim_family, []) if fim_family else []) + CHAT_TOKENS
    tokens += specials
    types += [gguf.TokenType.CONTROL] * len(specials)
    filler = n_vocab - len(tokens)
    if filler < 0:
        raise ValueError("n_vocab too small for the byte and special tokens")
    tokens += [f"<filler_{i}>" for i in range(filler)]
    types += [gguf.TokenType.USER_DEFINED] * filler

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    if chat_template:
        writer.add_chat_template(chat_template)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", n_vocab, n_embd)
    tensor("output.weight", n_vocab, n_embd)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{name}.weight", n_embd, n_embd)
        if architecture == "qwen2":
            for name in ("attn_q", "attn_k", "attn_v"):
                writer.add_tensor(f"blk.{i}.{name}.bias", np.zeros(n_embd, dtype=np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", n_embd * 2, n_embd)
        tensor(f"blk.{i}.ffn_up.weight", n_embd * 2, n_embd)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_embd * 2)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
