"""The model card's prompt and its tokenization, reproduced id for id with `tokenizers` alone.

The recipe (Qwen/Qwen3-Reranker model card, transformers example) tokenizes three pieces separately:
the fixed prefix, the pair text ``<Instruct>: …\\n<Query>: …\\n<Document>: …`` truncated at its end to
``max_length - len(prefix) - len(suffix)`` tokens, and the fixed suffix; the ids are concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from .errors import ArtifactError, InputError, first_line

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
# The transformers example joins the fields with "\n" (our reference); the vLLM example uses "\n\n".
TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEFAULT_MAX_LENGTH = 8192


def pair_text(
    query: str,
    document: str,
    instruction: str | None = None,
    *,
    template: str = TEMPLATE,
    default_instruction: str = DEFAULT_INSTRUCTION,
) -> str:
    """The recipe's pair text; `instruction=None` means the default instruction."""
    return template.format(
        instruction=default_instruction if instruction is None else instruction, query=query, document=document
    )


class PromptTokenizer:
    """Turns (query, document) pairs into the recipe's token ids."""

    def __init__(
        self,
        tokenizer_file: str | Path,
        *,
        prefix: str = PREFIX,
        suffix: str = SUFFIX,
        template: str = TEMPLATE,
        default_instruction: str = DEFAULT_INSTRUCTION,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        try:
            tok = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise ArtifactError(
                f"cannot read the tokenizer {tokenizer_file}: {first_line(exc)}; re-export the artifact"
            ) from None
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self.template = template
        self.default_instruction = default_instruction
        self.prefix_ids = tok.encode(prefix, add_special_tokens=False).ids
        self.suffix_ids = tok.encode(suffix, add_special_tokens=False).ids
        self.max_length = max_length
        self.pair_budget = max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if self.pair_budget < 1:
            raise InputError(
                f"max_length={max_length} leaves no room for a document: the prompt's fixed prefix and suffix "
                f"take {len(self.prefix_ids) + len(self.suffix_ids)} tokens; use a larger max_length"
            )

    def count(self, text: str) -> int:
        """Tokens of `text` alone (no prompt): what the benchmark workloads cut their documents by."""
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def pair_text(self, query: str, document: str, instruction: str | None = None) -> str:
        return pair_text(
            query, document, instruction, template=self.template, default_instruction=self.default_instruction
        )

    def encode(
        self, pairs: Sequence[tuple[str, str]], instruction: str | None = None, *, truncate: bool = True
    ) -> list[list[int]]:
        """Token ids of the full prompt for each pair, truncated as the recipe does (or not, to measure)."""
        texts = [self.pair_text(q, d, instruction) for q, d in pairs]
        encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        budget = self.pair_budget if truncate else None
        return [self.prefix_ids + e.ids[:budget] + self.suffix_ids for e in encodings]


def check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, got {type(value).__name__}")
    return value


def check_documents(documents: object) -> list[str]:
    if isinstance(documents, (str, bytes)):
        raise InputError("documents must be a list of strings, got a single string; wrap it in a list")
    try:
        docs = list(documents)  # type: ignore[call-overload]
    except TypeError:
        raise InputError(f"documents must be a list of strings, got {type(documents).__name__}") from None
    for i, doc in enumerate(docs):
        check_text(doc, f"documents[{i}]")
    return docs
