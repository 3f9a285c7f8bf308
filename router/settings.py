"""One settings object for the CLI and the server: flags > environment (ROUTE_*) > config file > defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from models.backend import default_threads

CONFIG_DIR = Path(platformdirs.user_config_dir("route"))


def default_config_file() -> Path:
    """The user's config file; ROUTE_CONFIG_FILE points elsewhere (tests, several setups)."""
    return Path(os.environ.get("ROUTE_CONFIG_FILE", CONFIG_DIR / "config.yaml"))


def default_memory_budget() -> int:
    """Half of physical RAM: leaves room for the editor, the browser and the OS."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


# Agent CLIs ask for their vendor's model names: Claude Code `claude-opus-...` (and `claude-haiku-...`
# for titles and summaries), Codex `gpt-5...-codex`, OpenAI SDK examples `gpt-4o` / `o3`. Routed
# like `auto`, and the decision's reasons name the alias that applied.
DEFAULT_MODEL_ALIASES: dict[str, str] = {"claude-*": "auto", "gpt-*": "auto", "o[0-9]*": "auto", "codex-*": "auto"}


class Settings(BaseSettings):
    """Everything the router can be told. Each description doubles as CLI help text."""

    model_config = SettingsConfigDict(env_prefix="ROUTE_", extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description="Address to bind; a non-loopback address requires api_key.")
    port: int = Field(8012, ge=0, le=65535, description="Port to listen on (8012: the llama.vim / llama.vscode default).")
    api_key: SecretStr | None = Field(None, description="If set, every request must send `Authorization: Bearer <key>`.")
    cors_origins: list[str] = Field(default_factory=list, description="Browser origins allowed by CORS (none by default).")
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest request body accepted; larger bodies get 413.")

    profile: str = Field("starter", description="Built-in model profile used when no catalog file is given.")
    catalog: Path | None = Field(None, description="A YAML model catalog; overrides the profile.")
    models: dict[str, Path] = Field(
        default_factory=dict, description="Local GGUF files per label (LABEL=PATH), used without any catalog."
    )
    models_dir: Path = Field(
        Path(platformdirs.user_data_dir("route")) / "models",
        description="Where local model paths may live, and where assembled offline weights are kept.",
    )

    memory_budget_bytes: int = Field(
        default_factory=default_memory_budget, gt=0, description="Bytes of model weights the pool may keep loaded."
    )
    n_ctx: int | None = Field(
        None, gt=0,
        description="Context tokens of every local model (--ctx-size); unset: the catalog's n_ctx, else the "
        "model's trained context, capped so its KV cache fits memory_budget_bytes.",
    )
    idle_ttl_s: float = Field(900.0, ge=0, description="Unload a model idle this long (0: never).")
    queue_size: int = Field(16, ge=1, description="Requests waiting per model before 503 + Retry-After.")
    n_threads: int = Field(
        default_factory=default_threads, ge=1, description="llama.cpp decode threads per model."
    )
    n_threads_batch: int = Field(
        default_factory=default_threads, ge=1, description="llama.cpp prompt-processing threads."
    )
    n_batch: int = Field(
        512, ge=1, description="Prompt tokens per llama.cpp decode call (llama-server --batch-size); see bench/prefill.py."
    )
    n_ubatch: int = Field(
        512, ge=1, description="Prompt tokens per compute graph (llama-server --ubatch-size); at most n_batch."
    )
    prompt_cache_bytes: int | None = Field(
        None, ge=0,
        description="RAM for saved prompt states (KV caches kept when another prompt takes their model); unset: what "
        "the loaded models leave of memory_budget_bytes; 0: none.",
    )
    use_mmap: bool = Field(
        False,
        description="Memory-map GGUF files: faster cold loads, but a file truncated while loaded crashes the server (SIGBUS).",
    )
    preload: list[str] = Field(default_factory=list, description="Model ids loaded at startup and pinned.")
    model_aliases: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_MODEL_ALIASES),
        description="Model names the catalog lacks (glob patterns, first match wins) mapped to `auto`, a label or a "
        "model id; any other unknown name is a 404.",
    )

    fim_trim: bool = Field(
        True,
        description="End FIM answers where the middle ends: at a repeat of the suffix, a code fence, prose after the "
        "code, or the cursor line's end when code follows the cursor (a request's `fim_trim: false` turns it off).",
    )

    classifier_artifact: Path | None = Field(None, description="A classifier .skops file replacing the shipped one.")

    server_url: str | None = Field(None, description="CLI: send prompts to this running router instead of in-process.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Upstream backends: connect timeout.")
    first_token_timeout_s: float = Field(120.0, gt=0, description="Upstream backends: time allowed until the first token.")
    idle_stream_timeout_s: float = Field(60.0, gt=0, description="Upstream backends: longest silence inside a stream.")

    log_level: str = Field("info", description="Logging level: debug, info, warning, error.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=default_config_file()))


def load_settings(**overrides: Any) -> Settings:
    """The single entry point: CLI flags arrive as overrides (None means 'not given')."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def setting_sources(**overrides: Any) -> dict[str, str]:
    """Where each effective setting comes from (`route config`): flag, env ROUTE_*, config file, or default.

    Mirrors the precedence of load_settings by asking the same sources it uses.
    """
    given = {k for k, v in overrides.items() if v is not None}
    from_env = EnvSettingsSource(Settings)()
    config_file = default_config_file()
    from_file = YamlConfigSettingsSource(Settings, yaml_file=config_file)()
    sources = {}
    for name in Settings.model_fields:
        if name in given:
            sources[name] = "flag"
        elif name in from_env:
            sources[name] = f"env ROUTE_{name.upper()}"
        elif name in from_file:
            sources[name] = f"config file {config_file}"
        else:
            sources[name] = "default"
    return sources
