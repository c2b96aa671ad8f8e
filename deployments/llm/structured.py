"""JSON-schema constrained decoding for the transformers engine (xgrammar).

Every tool call an agent emits must parse, so the transformers engine masks, at each step,
every token that would take the output off the JSON schema. The mask comes from a grammar
matcher per batch row; rows without a schema are left alone, and rows with different
schemas share one forward pass.

Which library, and why (measured on this 2-core CPU box, SmolLM2-135M-Instruct Q4_1
dequantized to float32, 1 torch thread, greedy, one agent prompt, up to 64 new tokens,
``model.generate`` with each library's processor, one run each, neighbours idle):

================================  ==========  ==============  =======================
backend                           tokens/s    compile/build   output parses
================================  ==========  ==============  =======================
none (unconstrained)              29.4        --              no (rambles, cut at 64)
xgrammar 0.2.8                    27.2        0.09 s          yes (38 tokens)
outlines 1.3.3 (outlines-core)    22.7        0.74 s          yes (34 tokens)
lm-format-enforcer 0.11.3         24.4        0.86 s          no (cut at 64 tokens)
================================  ==========  ==============  =======================

xgrammar costs ~7% of decode speed, compiles a schema in under 0.1 s (and caches it),
fills a per-row bitmask in C++, and is what vLLM itself uses for structured outputs, so
the CPU and GPU engines constrain the same way. lm-format-enforcer's transformers
integration does not even import on transformers 5 (it imports
``transformers.tokenization_utils.PreTrainedTokenizerBase``); it was measured through a
shim, and it let the model nest objects until the token budget ran out. outlines was
slower per token and 8x slower to build the index.

Inside :class:`~deployments.llm.transformers_engine.TransformersEngine`'s own step loop
(``load_tests/bench_llm.py``, 8 agent prompts, max_tokens 200, same box): batch 1 decodes
26.7 tokens/s unconstrained vs 24.8 constrained (-7%), and 0/8 unconstrained answers parse
as JSON vs 8/8 constrained. (Batch-8 figures, 46.7 vs 69.4 tokens/s, mostly reflect how long
the rows run: unconstrained rows ramble to the 200-token limit at different times.)

NOTE: on Linux x86-64, ``pip install xgrammar`` also pulls ``triton`` (~1 GB on disk) for
its GPU kernels; nothing here imports it (the CPU path uses xgrammar's C++ kernel).

Usage::

    grammar = JsonGrammar(tokenizer, vocab_size=model.config.vocab_size)
    processor = JsonSchemaLogitsProcessor(grammar, [schema, None])   # one entry per row
    model.generate(**batch, logits_processor=LogitsProcessorList([processor]))
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from transformers import LogitsProcessor

if TYPE_CHECKING:  # NOTE: torch and xgrammar are imported lazily; both are slow to import.
    import torch

logger = logging.getLogger(__name__)

class StructuredOutputUnavailableError(RuntimeError):
    """xgrammar is not installed, so JSON-schema constrained decoding cannot run."""


class InvalidJsonSchemaError(ValueError):
    """The JSON schema given for constrained decoding cannot be compiled."""


def _import_xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise StructuredOutputUnavailableError(
            "JSON-schema constrained decoding needs the `xgrammar` package (pip install xgrammar==0.2.8)."
        ) from exc
    return xgrammar


class JsonGrammar:
    """Compiles JSON schemas into grammars for one tokenizer (compiled schemas are cached).

    Construct once per engine with the Hugging Face tokenizer and the model's vocabulary
    size (the logits width, which may exceed ``len(tokenizer)``).

    Args:
        tokenizer: The Hugging Face tokenizer of the model.
        vocab_size (`int`): Width of the model's logits.
        stop_token_ids (`list[int]`, *optional*): Tokens that end a row (EOS); the grammar
            allows them once the JSON value is complete. Defaults to the tokenizer's EOS.
        any_whitespace (`bool`, *optional*, defaults to False): Whether the grammar allows
            free whitespace between JSON tokens. Off: a small model otherwise tends to spend
            its budget on newlines.
    """

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        stop_token_ids: list[int] | None = None,
        any_whitespace: bool = False,
    ) -> None:
        xgr = _import_xgrammar()
        self._xgr = xgr
        self.vocab_size = int(vocab_size)
        self.any_whitespace = any_whitespace
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=self.vocab_size, stop_token_ids=stop_token_ids
        )
        self.compiler = xgr.GrammarCompiler(self.tokenizer_info, max_threads=1, cache_enabled=True)
        self._lock = threading.Lock()

    def compile(self, schema: dict[str, Any] | str) -> Any:
        """Compiles one JSON schema (cached by its text).

        Args:
            schema (`dict` or `str`): A JSON schema.

        Returns:
            An ``xgrammar.CompiledGrammar``.

        Raises:
            InvalidJsonSchemaError: the schema is not valid JSON or xgrammar rejects it.
        """
        # NOTE: no sort_keys: the order of "properties" is the order the grammar emits them in.
        text = schema if isinstance(schema, str) else json.dumps(schema)
        try:
            with self._lock:
                return self.compiler.compile_json_schema(text, any_whitespace=self.any_whitespace, strict_mode=True)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError with the reason
            raise InvalidJsonSchemaError(f"Cannot compile the JSON schema for constrained decoding: {exc}") from exc

    def matcher(self, schema: dict[str, Any] | str) -> Any:
        """Returns a fresh ``xgrammar.GrammarMatcher`` for ``schema``."""
        return self._xgr.GrammarMatcher(self.compile(schema))


class JsonSchemaLogitsProcessor(LogitsProcessor):
    """A transformers ``LogitsProcessor`` that keeps each batch row inside its JSON schema.

    One matcher per row; ``None`` leaves that row unconstrained. Two ways to drive it:

    1. as a ``LogitsProcessor`` in ``model.generate(logits_processor=[...])``: each call
       feeds every row the token sampled at the previous step, then masks;
    2. from the engine's step loop: :meth:`mask` before choosing tokens, :meth:`accept`
       after, :meth:`select` when finished rows leave the batch.

    Args:
        grammar (`JsonGrammar`): The compiler for this tokenizer.
        schemas (`list[dict | str | None]`): One schema (or ``None``) per batch row.
    """

    def __init__(self, grammar: JsonGrammar, schemas: list[dict[str, Any] | str | None]) -> None:
        self.grammar = grammar
        self.matchers: list[Any | None] = [grammar.matcher(s) if s is not None else None for s in schemas]
        self._bitmask = grammar._xgr.allocate_token_bitmask(len(self.matchers), grammar.vocab_size)
        self._started = False

    @property
    def active(self) -> bool:
        """Whether any row is constrained."""
        return any(m is not None for m in self.matchers)

    def mask(self, scores: "torch.Tensor") -> "torch.Tensor":
        """Sets the logits of every token the rows' grammars forbid to ``-inf`` (in place).

        Args:
            scores (`torch.Tensor`): ``(rows, vocab)`` float logits, rows in the order of
                the current :attr:`matchers`.

        Returns:
            ``scores``.
        """
        import torch

        xgr = self.grammar._xgr
        rows = [i for i, m in enumerate(self.matchers) if m is not None and not m.is_terminated()]
        if not rows:
            return scores
        for i in rows:
            self.matchers[i].fill_next_token_bitmask(self._bitmask, i)
        # NOTE: the bitmask lives on the CPU; xgrammar's CPU kernel needs float32 logits.
        if scores.device.type == "cpu" and scores.dtype != torch.float32:
            raise TypeError(f"Constrained decoding needs float32 logits on the CPU, got {scores.dtype}.")
        xgr.apply_token_bitmask_inplace(scores, self._bitmask[: len(self.matchers)].to(scores.device), indices=rows)
        return scores

    def accept(self, row: int, token_id: int) -> None:
        """Advances row ``row``'s matcher by one sampled token.

        Raises:
            RuntimeError: the token is not allowed (only if the caller ignored the mask).
        """
        matcher = self.matchers[row]
        if matcher is None or matcher.is_terminated():
            return
        if not matcher.accept_token(int(token_id)):
            raise RuntimeError(f"Token {token_id} is not allowed by row {row}'s JSON schema.")

    def is_terminated(self, row: int) -> bool:
        """Whether row ``row``'s JSON value is complete and its stop token was accepted."""
        matcher = self.matchers[row]
        return matcher is not None and matcher.is_terminated()

    def select(self, keep: list[int]) -> None:
        """Keeps only the rows ``keep`` (in that order), following the engine's batch."""
        self.matchers = [self.matchers[i] for i in keep]

    def __call__(self, input_ids: "torch.LongTensor", scores: "torch.FloatTensor") -> "torch.FloatTensor":
        # transformers' LogitsProcessor contract: input_ids holds every token so far.
        if self._started:
            last = input_ids[:, -1].tolist()
            for row, token in enumerate(last):
                self.accept(row, token)
        self._started = True
        return self.mask(scores)
