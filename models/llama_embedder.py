"""The in-process embedding backend: one GGUF embedding model in llama-cpp-python (`embedding=True`).

Each input is evaluated alone (sequence 0, memory cleared between inputs: llama.cpp's contexts
hold one sequence here) and pooled as the GGUF says, or as the catalog's `pooling` overrides; the
vectors leave as pooled, and each dialect normalises as its clients expect. A whole input must fit
one batch (a non-causal model attends to all of it at once), so the batch is the context.
Not thread-safe: the pool gives it exactly one worker thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import llama_cpp

from models.backend import BackendOptions
from models.capabilities import Capabilities
from models.catalog import ModelSpec
from models.errors import ContextLengthExceeded, InvalidRequest, ModelLoadFailed
from models.events import Embeddings, Event, Finish, Usage
from models.gguf_header import kv_cache_bytes
from models.llama_backend import open_gguf, route_llama_logs
from models.request import Request

POOLING = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
           "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}


class LlamaEmbedder:
    """A loaded GGUF embedding model implementing the Backend protocol (parallel = 1)."""

    parallel = 1
    chat_template = ""  # it renders no chats

    def __init__(self, spec: ModelSpec, weights_path: Path | str, options: BackendOptions | None = None) -> None:
        options = options or BackendOptions()
        route_llama_logs()
        self.model_id: str = spec.id
        self.weights_path = Path(weights_path)
        pooling = POOLING[spec.pooling] if spec.pooling else llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
        # The whole input goes in one batch: a pooled embedding needs every token in one ubatch.
        self._llm = open_gguf(spec, self.weights_path, options, embedding=True, pooling_type=pooling,
                              n_batch=spec.n_ctx, n_ubatch=spec.n_ctx)
        llm = self._llm
        if llm.pooling_type() not in POOLING.values():
            llm.close()
            raise ModelLoadFailed(
                f"Model {self.model_id!r} is marked `embedding: true`, but its GGUF declares no pooling, so "
                "llama.cpp would give one vector per token (or a rank score), not one per input. If it is an "
                "embedding model, set `pooling: mean` (or cls, last: its model card says which) in the catalog.",
                model=self.model_id,
            )
        self.n_ctx: int = llm.n_ctx()
        self.n_embd: int = llm.n_embd()
        self._n_vocab = llm.n_vocab()
        self._ctx = llm._ctx.ctx
        self.memory_bytes: int = self.weights_path.stat().st_size + kv_cache_bytes(llm.metadata, self.n_ctx)
        self._capabilities = Capabilities(self.n_ctx, fim=False, tools=False,
                                          architecture=llm.metadata.get("general.architecture"))
        self._prepared: tuple[Request, list[list[int]]] | None = None
        self._closed = False

    # ---- Backend protocol ---------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def count_prompt_tokens(self, request: Request) -> int:
        """The longest input's tokens: each input must fit the context on its own."""
        return max((len(ids) for ids in self._tokens(request)), default=0)

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        """One Embeddings event (a vector per input) and the Finish; cancel is checked between inputs."""
        if self._closed:
            raise ModelLoadFailed(f"Model {self.model_id!r} was unloaded.", model=self.model_id)
        inputs = self._tokens(request)
        self._prepared = None
        return self._run(inputs, cancel)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._llm.close()

    # ---- work ------------------------------------------------------------------------------

    def _tokens(self, request: Request) -> list[list[int]]:
        """Each input's tokens (texts with the model's own BOS/EOS), checked once per request."""
        if self._prepared is not None and self._prepared[0] is request:
            return self._prepared[1]
        if request.kind != "embed":
            raise InvalidRequest(f"Model {self.model_id!r} is an embedding model: it does not generate text.",
                                 param="model")
        out = []
        for i, item in enumerate(request.inputs):
            param = "input" if len(request.inputs) == 1 else f"input[{i}]"
            if isinstance(item, str):
                ids = self._llm.tokenize(item.encode("utf-8"), add_bos=True, special=False)
            else:
                ids = list(item)
                if any(not 0 <= t < self._n_vocab for t in ids):
                    raise InvalidRequest(f"`{param}` holds token ids outside model {self.model_id!r}'s vocabulary "
                                         f"(0..{self._n_vocab - 1}).", param=param)
            if not ids:
                raise InvalidRequest(f"`{param}` is empty: there is nothing to embed.", param=param)
            if len(ids) > self.n_ctx:
                if not request.truncate:
                    raise ContextLengthExceeded(
                        f"`{param}` is {len(ids)} tokens: it exceeds model {self.model_id!r}'s context of "
                        f"{self.n_ctx} tokens. Shorten or split it.",
                        param=param, prompt_tokens=len(ids), n_ctx=self.n_ctx,
                    )
                ids = ids[: self.n_ctx]
            out.append(ids)
        self._prepared = (request, out)
        return out

    def _run(self, inputs: list[list[int]], cancel: threading.Event) -> Iterator[Event]:
        started = time.perf_counter()
        vectors = []
        for ids in inputs:
            if cancel.is_set():
                yield Finish("cancelled", Usage(prompt_tokens=sum(map(len, inputs))))
                return
            vectors.append(self._embed(ids))
        yield Embeddings(vectors)
        yield Finish("stop", Usage(prompt_tokens=sum(map(len, inputs)),
                                   prompt_ms=(time.perf_counter() - started) * 1000.0))

    def _embed(self, ids: list[int]) -> list[float]:
        """One input's pooled vector: a fresh sequence 0, every token in one batch."""
        llm = self._llm
        llama_cpp.llama_kv_self_clear(self._ctx)
        batch = llm._batch
        batch.reset()
        batch.add_sequence(ids, 0, True)  # pooling reads every token's output
        llm._ctx.decode(batch)
        return llama_cpp.llama_get_embeddings_seq(self._ctx, 0)[: self.n_embd]
