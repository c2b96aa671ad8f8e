"""The CPU engine: a causal LM through transformers, decoded step by step in batches.

Loads a Hugging Face model folder, or a GGUF file (``from_pretrained(folder,
gguf_file=name)``; transformers dequantizes GGUF blocks to float, which needs the ``gguf``
and ``accelerate`` packages). Prompts go through the model's own chat template
(``tokenizer.apply_chat_template``).

Why a step-wise loop instead of ``model.generate``: requests that arrive together are
decoded in one batch, but each keeps its own ``max_tokens``, stop strings, seed and JSON
schema, finished rows leave the batch at once (their KV-cache rows are dropped, so the
forward pass shrinks), and every step's text can be streamed to its own caller. The loop:

1. encode each prompt with the chat template;
2. left-pad them into one batch (position ids from the attention mask) and prefill;
3. per step: mask logits by each row's JSON schema, pick each row's token (argmax when
   ``temperature == 0``, else sampled from the row's own seeded ``torch.Generator``, so a
   row's samples do not depend on its batch-mates), detokenize incrementally, check stop
   tokens / stop strings / length, drop finished rows, and run one decode forward pass.

Measured on this 2-core box (``load_tests/bench_llm.py``, 8 requests x 32 new tokens, 1
torch thread): 26 tokens/s one request at a time, 85 tokens/s as one batch of 8 (3.2x);
HF ``model.generate`` on the same padded batch gave 83 tokens/s (one run each, so "about
the same"): the per-row control of the loop costs no measurable speed. Greedy outputs of a batch equal those of single requests up
to float rounding of the padded matmuls (the unit tests check a set of prompts).

Usage::

    engine = TransformersEngine.from_path("models/llm/SmolLM2-135M-Instruct.Q4_1.gguf")
    result = await engine.chat([{"role": "user", "content": "Hi"}], max_tokens=32)
    results = engine.generate([ChatRequest(messages=...), ChatRequest(messages=...)])
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from deployments.common.aio import iterate_in_thread
from deployments.llm import constants
from deployments.llm.engines import ChatRequest, ChatResult, TextDelta, message_text

if TYPE_CHECKING:  # NOTE: torch/transformers are imported lazily; they are slow to import.
    import torch

    from deployments.llm.structured import JsonGrammar

logger = logging.getLogger(__name__)

#: Torch dtypes accepted by name.
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


@dataclass
class _Row:
    """Decoding state of one request in the batch."""

    index: int
    request: ChatRequest
    prompt_len: int
    start_s: float
    stop_ids: frozenset[int]
    generator: "torch.Generator | None" = None
    token_ids: list[int] = field(default_factory=list)
    emitted: int = 0
    text: str = ""
    first_token_s: float | None = None
    finish_reason: str | None = None
    final_text: str | None = None


class TransformersEngine:
    """A transformers causal LM, decoded in batches on the CPU.

    Construct with :meth:`from_path` (a GGUF file or a model folder); tests and the
    benchmark may pass an already-loaded ``model`` and ``tokenizer`` to share one copy.
    Generation is serialized by a lock: one batch at a time per engine, so concurrent
    callers never oversubscribe the CPU. Callers that want batching hand several requests
    to :meth:`chat_batch` / :meth:`stream_batch` (the Serve wrapper does, via
    ``@serve.batch``).

    Args:
        model: A loaded ``AutoModelForCausalLM`` (eval mode).
        tokenizer: Its tokenizer, with a chat template.
        model_id (`str`): Id reported to clients.
        max_batch_size (`int`, *optional*, defaults to 8): Most rows decoded together;
            larger request lists run in consecutive chunks.
        json_grammar (`JsonGrammar`, *optional*): Schema compiler for constrained decoding;
            built on first use.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str,
        max_batch_size: int = 8,
        json_grammar: "JsonGrammar | None" = None,
    ) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"The tokenizer of {model_id} has no chat template; use an instruct/chat model.")
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.max_batch_size = max(1, int(max_batch_size))
        self._json_grammar = json_grammar
        self._lock = threading.Lock()
        self.vocab_size = int(model.config.vocab_size)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_token_ids = frozenset(_stop_token_ids(model, tokenizer))

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_path(
        cls,
        path: Path | str,
        *,
        model_id: str | None = None,
        dtype: str = "float32",
        torch_threads: int | None = None,
        max_batch_size: int = 8,
    ) -> "TransformersEngine":
        """Loads a GGUF file or a Hugging Face model folder from local disk (never a hub).

        Args:
            path (`Path` or `str`): A ``.gguf`` file, or a folder with ``config.json``.
            model_id (`str`, *optional*): Id to report; defaults to the file/folder stem.
            dtype (`str`, *optional*, defaults to ``"float32"``): Weights dtype; GGUF
                blocks are dequantized to it. float32 is the fast one on most CPUs.
            torch_threads (`int`, *optional*): Sets torch's (process-wide) thread count.
            max_batch_size (`int`, *optional*, defaults to 8): See the class.

        Returns:
            The engine.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: unknown ``dtype``, or a file that is not ``.gguf``.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # 1. Check inputs
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"LLM model {path} does not exist. For the default model run "
                                    "`python -m deployments.llm.demo <models_dir>`.")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        # 2. Where transformers should look
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ValueError(f"{path} is a file but not a .gguf file; pass a GGUF file or a model folder.")
            folder, kwargs = str(path.parent), {"gguf_file": path.name}
            model_id = model_id or path.name.split(".")[0]
        else:
            folder, kwargs = str(path), {}
            model_id = model_id or path.name
        # 3. Load (local files only: nothing is fetched from a hub)
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=getattr(torch, dtype), **kwargs
        ).eval()
        logger.info("Loaded %s from %s in %.1fs (%s)", model_id, path, time.perf_counter() - start, dtype)
        return cls(model, tokenizer, model_id=model_id, max_batch_size=max_batch_size)

    @property
    def json_grammar(self) -> "JsonGrammar":
        """The JSON-schema compiler (built on first constrained request)."""
        if self._json_grammar is None:
            from deployments.llm.structured import JsonGrammar

            self._json_grammar = JsonGrammar(self.tokenizer, self.vocab_size, stop_token_ids=sorted(self.stop_token_ids))
        return self._json_grammar

    # --- prompts --------------------------------------------------------------------------

    def encode_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of ``messages`` through the model's chat template, ready for the answer.

        Args:
            messages (`list[dict]`): OpenAI-style messages.

        Returns:
            The ids, ending with the assistant header (``add_generation_prompt=True``).
        """
        flat = [{"role": m["role"], "content": message_text(m.get("content"))} for m in messages]
        ids = self.tokenizer.apply_chat_template(flat, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids)

    # --- the decoding loop ------------------------------------------------------------------

    def iter_steps(self, requests: list[ChatRequest]) -> Iterator[list[TextDelta | None]]:
        """Decodes ``requests`` together, yielding after every step (blocking).

        Each yielded list has one entry per request, in order: a :class:`TextDelta` for a
        row still running (possibly ``""`` while text is held back, e.g. a partial stop
        string), the final delta (``.result`` set) on the step the row finishes, and
        ``None`` for rows that finished earlier. Requests beyond ``max_batch_size`` run in
        later chunks; their entries are ``""`` until their chunk starts.

        Holds the engine's lock while running, so call it from one worker thread.

        Args:
            requests (`list[ChatRequest]`): The requests (validated here).

        Yields:
            One list per decode step.

        Raises:
            ValueError: a request is invalid or does not fit the model's context.
        """
        for r in requests:
            r.check()
        prompts = [self.encode_prompt(r.messages) for r in requests]
        for r, ids in zip(requests, prompts):
            if self.max_context and len(ids) + r.max_tokens > self.max_context:
                raise ValueError(
                    f"Prompt ({len(ids)} tokens) + max_tokens ({r.max_tokens}) exceeds the context of "
                    f"{self.model_id} ({self.max_context} tokens)."
                )
        with self._lock:
            done: list[bool] = [False] * len(requests)
            for chunk_start in range(0, len(requests), self.max_batch_size):
                chunk = list(range(chunk_start, min(len(requests), chunk_start + self.max_batch_size)))
                for step in self._decode_chunk(requests, prompts, chunk):
                    out: list[TextDelta | None] = []
                    for i in range(len(requests)):
                        if i in step:
                            out.append(step[i])
                            if step[i].result is not None:
                                done[i] = True
                        else:
                            out.append(None if done[i] else TextDelta(""))
                    yield out

    def _decode_chunk(
        self, requests: list[ChatRequest], prompts: list[list[int]], chunk: list[int]
    ) -> Iterator[dict[int, TextDelta]]:
        import torch
        from transformers import DynamicCache

        start = time.perf_counter()
        rows = [
            _Row(
                index=i,
                request=requests[i],
                prompt_len=len(prompts[i]),
                start_s=requests[i].arrival_s or start,
                stop_ids=self.stop_token_ids,
                generator=_row_generator(requests[i]),
            )
            for i in chunk
        ]
        processor = None
        if any(row.request.json_schema is not None for row in rows):
            from deployments.llm.structured import JsonSchemaLogitsProcessor

            processor = JsonSchemaLogitsProcessor(self.json_grammar, [row.request.json_schema for row in rows])

        # 1. Left-pad the prompts into one batch
        width = max(row.prompt_len for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            ids = prompts[row.index]
            input_ids[b, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[b, width - len(ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)

        with torch.inference_mode():
            # 2. Prefill
            cache = DynamicCache(config=self.model.config)
            logits = self._forward(input_ids, mask, positions, cache)
            last_pos = positions[:, -1]
            while True:
                # 3. Constrain, choose, detokenize
                if processor is not None:
                    processor.mask(logits)
                tokens = self._choose(logits, rows)
                now = time.perf_counter()
                events: dict[int, TextDelta] = {}
                keep: list[int] = []
                for b, (row, token) in enumerate(zip(rows, tokens)):
                    if processor is not None:
                        processor.accept(b, token)
                    events[row.index] = self._advance(row, token, now, processor is not None and processor.is_terminated(b))
                    if row.finish_reason is None:
                        keep.append(b)
                yield events
                if not keep:
                    return
                # 4. Drop finished rows (and the pad columns only they needed)
                if len(keep) < len(rows):
                    index = torch.tensor(keep, dtype=torch.long)
                    cache.batch_select_indices(index)
                    mask, last_pos = mask[index], last_pos[index]
                    tokens = [tokens[b] for b in keep]
                    rows = [rows[b] for b in keep]
                    if processor is not None:
                        processor.select(keep)
                    mask = _trim_left_padding(cache, mask)
                # 5. One decode step
                step_ids = torch.tensor(tokens, dtype=torch.long).unsqueeze(1)
                mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
                last_pos = last_pos + 1
                logits = self._forward(step_ids, mask, last_pos.unsqueeze(1), cache)

    def _forward(self, input_ids: "torch.Tensor", mask: "torch.Tensor", positions: "torch.Tensor", cache: Any) -> "torch.Tensor":
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    @staticmethod
    def _choose(logits: "torch.Tensor", rows: list[_Row]) -> list[int]:
        import torch

        chosen = logits.argmax(dim=-1).tolist()
        for b, row in enumerate(rows):
            r = row.request
            if r.temperature <= 0:
                continue
            probs = torch.softmax(logits[b] / r.temperature, dim=-1)
            if r.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                cut = sorted_probs.cumsum(-1) - sorted_probs > r.top_p
                sorted_probs[cut] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            chosen[b] = int(torch.multinomial(probs, 1, generator=row.generator).item())
        return chosen

    def _advance(self, row: _Row, token: int, now: float, schema_done: bool) -> TextDelta:
        """Adds one token to a row; returns its text delta (final when the row ends)."""
        if row.first_token_s is None:
            row.first_token_s = now
        request = row.request
        generated = len(row.token_ids) + 1
        if token in row.stop_ids:
            row.finish_reason = constants.FINISH_STOP
        else:
            row.token_ids.append(token)
            row.text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
            # Stop strings: cut the text before the first one.
            for s in request.stop or ():
                at = row.text.find(s, max(0, row.emitted - len(s)))
                if at != -1:
                    row.text = row.text[:at]
                    row.finish_reason = constants.FINISH_STOP
                    break
            if row.finish_reason is None and schema_done:
                row.finish_reason = constants.FINISH_STOP
            if row.finish_reason is None and generated >= request.max_tokens:
                row.finish_reason = constants.FINISH_LENGTH
        if row.finish_reason is not None:
            delta = row.text[row.emitted :]
            row.emitted = len(row.text)
            result = ChatResult(
                text=row.text,
                tokens_in=row.prompt_len,
                tokens_out=generated,
                finish_reason=row.finish_reason,
                latency_s=now - row.start_s,
                ttft_s=row.first_token_s - row.start_s,
                model=self.model_id,
            )
            return TextDelta(delta, result)
        safe = _safe_end(row.text, request.stop)
        delta = row.text[row.emitted : safe] if safe > row.emitted else ""
        row.emitted = max(row.emitted, safe)
        return TextDelta(delta)

    # --- sync and async entry points --------------------------------------------------------

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Runs ``requests`` to completion together (blocking).

        Args:
            requests (`list[ChatRequest]`): The requests.

        Returns:
            One :class:`ChatResult` per request, in order.
        """
        results: list[ChatResult | None] = [None] * len(requests)
        for step in self.iter_steps(requests):
            for i, delta in enumerate(step):
                if delta is not None and delta.result is not None:
                    results[i] = delta.result
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"Decoding ended without a result for requests {missing}.")
        return results  # type: ignore[return-value]

    async def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Runs ``requests`` together on a worker thread (see :meth:`generate`)."""
        return await asyncio.to_thread(self.generate, requests)

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """Runs one chat completion (see :class:`~deployments.llm.engines.LLMEngine`)."""
        request = ChatRequest(messages=messages, **params)
        request.arrival_s = request.arrival_s or time.perf_counter()
        return (await self.chat_batch([request]))[0]

    async def stream_batch(self, requests: list[ChatRequest]) -> AsyncIterator[list[TextDelta | None]]:
        """Async version of :meth:`iter_steps` (decoding runs on one worker thread)."""
        async for step in iterate_in_thread(lambda: self.iter_steps(requests)):
            yield step

    async def stream_chat(self, messages: list[dict[str, Any]], **params: Any) -> AsyncIterator[TextDelta]:
        """Streams one chat completion (see :class:`~deployments.llm.engines.LLMEngine`)."""
        request = ChatRequest(messages=messages, **params)
        request.arrival_s = request.arrival_s or time.perf_counter()
        async for step in self.stream_batch([request]):
            delta = step[0]
            if delta is None:
                return
            if delta or delta.result is not None:
                yield delta

    async def aclose(self) -> None:
        """Nothing to release (the model is freed with the engine)."""


def _stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _row_generator(request: ChatRequest) -> "torch.Generator | None":
    import torch

    if request.temperature <= 0:
        return None
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    return torch.Generator().manual_seed(int(seed))


def _safe_end(text: str, stops: list[str] | None) -> int:
    """How much of ``text`` can be streamed: hold back a trailing partial stop string or a
    trailing U+FFFD (half of a multi-byte character)."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    for s in stops or ():
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end -= k
                break
    return end


def _trim_left_padding(cache: Any, mask: "torch.Tensor") -> "torch.Tensor":
    """Drops leading columns that are padding in every remaining row (cache and mask)."""
    used = mask.any(dim=0).nonzero()
    first = int(used[0]) if used.numel() else 0
    if first == 0:
        return mask
    for layer in getattr(cache, "layers", ()):
        keys = getattr(layer, "keys", None)
        if keys is None or keys.dim() != 4:
            return mask  # unknown cache layout: keep the padding, it is only wasted work
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, first:, :]
        layer.values = layer.values[:, :, first:, :]
    return mask[:, first:]
