"""Sampling fields the dialects share, and the rule for the ones we cannot honour.

A parameter is either mapped onto SamplingParams or accepted only at its no-op value; any other
value is refused with a 400 that names it. Nothing is accepted and silently ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.request import SamplingParams
from models.errors import UnsupportedParameter

MAX_TOKENS_LIMIT = 1_048_576
MAX_STOP_STRINGS = 32

# llama.cpp sampler switches: accepted at the value that turns them off, refused otherwise.
OFF_VALUES: dict[str, Any] = {
    "dynatemp_range": 0.0,
    "xtc_probability": 0.0,
    "dry_multiplier": 0.0,
    "mirostat": 0,
    "n_probs": 0,
    "ignore_eos": False,
}


def stop_tuple(stop: str | list[str] | None, field: str = "stop") -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else list(stop)
    if len(items) > MAX_STOP_STRINGS:
        raise UnsupportedParameter(f"At most {MAX_STOP_STRINGS} stop strings are supported.", param=field)
    return tuple(s for s in items if s)


def logit_bias_map(bias: dict[str, float] | list | None, field: str = "logit_bias") -> dict[int, float] | None:
    """OpenAI {"token_id": bias} or llama.cpp [[id, bias], ...] as {id: bias}."""
    if not bias:
        return None
    pairs = bias.items() if isinstance(bias, dict) else bias
    out: dict[int, float] = {}
    for pair in pairs:
        try:
            token, value = pair
            token_id = int(token)
            value = -100.0 if value is False else float(value)
        except (TypeError, ValueError):
            raise UnsupportedParameter(
                f"`{field}` must map token ids to numbers (text keys are not supported).", param=field
            ) from None
        if token_id < 0 or not -100.0 <= value <= 100.0:
            raise UnsupportedParameter(f"`{field}`: token ids are >= 0 and biases within [-100, 100].", param=field)
        out[token_id] = value
    return out


class LlamaCppExtras(BaseModel):
    """llama.cpp's sampling extensions, accepted on every dialect that llama.cpp-flavoured clients use."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(None, ge=0, description="Top-k sampling (0 = off).")
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, ge=0, le=10)
    repeat_last_n: int | None = Field(None, ge=-1, description="Accepted; the window is the model's default.")
    t_max_predict_ms: float | None = Field(None, ge=0, description="After this long, stop at the next newline.")
    t_max_prompt_ms: float | None = Field(None, description="Accepted as a hint (prompt time is not bounded).")
    cache_prompt: bool | None = Field(None, description="Accepted: the prompt cache is always on.")
    id_slot: int | None = Field(None, ge=-1, description="Client slot; identifies the client for FIM superseding.")
    samplers: list[str] | str | None = Field(None, description="Accepted: the sampler order is llama.cpp's default.")
    timings_per_token: bool | None = None
    dynatemp_range: float | None = Field(None, description="Only 0 (off) is supported.")
    dynatemp_exponent: float | None = None
    xtc_probability: float | None = Field(None, description="Only 0 (off) is supported.")
    xtc_threshold: float | None = None
    dry_multiplier: float | None = Field(None, description="Only 0 (off) is supported.")
    dry_base: float | None = None
    dry_allowed_length: int | None = None
    dry_penalty_last_n: int | None = None
    mirostat: int | None = Field(None, description="Only 0 (off) is supported.")
    n_probs: int | None = Field(None, description="Only 0 is supported (no token probabilities).")
    ignore_eos: bool | None = Field(None, description="Only false is supported.")
    lora: list[dict[str, Any]] | None = Field(None, description="Only an empty list is supported.")
    fim_trim: bool | None = Field(
        None, description="Router: end a FIM answer where the middle ends (false: the model's own end); unset: the "
        "server's fim_trim setting.",
    )

    @model_validator(mode="after")
    def _refuse_unhonoured(self) -> LlamaCppExtras:
        for name, off in OFF_VALUES.items():
            value = getattr(self, name, None)
            if value is not None and value != off:
                raise UnsupportedParameter(f"`{name}` is not supported (only {off!r}, which turns it off).", param=name)
        if self.lora:
            raise UnsupportedParameter("LoRA adapters are not supported.", param="lora")
        return self

    def extra_params(self) -> dict[str, Any]:
        """The llama.cpp knobs that map onto SamplingParams."""
        out: dict[str, Any] = {}
        for name in ("top_k", "min_p", "typical_p", "repeat_penalty", "t_max_predict_ms", "fim_trim"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def sampling_params(**values: Any) -> SamplingParams:
    """SamplingParams from the given values, dropping the ones left unset (None)."""
    return SamplingParams(**{k: v for k, v in values.items() if v is not None})
