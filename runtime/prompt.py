"""The model card's prompt and its tokenization, reproduced id for id with `tokenizers` alone.

The recipe (Qwen/Qwen3-Reranker model card, transformers example) tokenizes three pieces separately:
the fixed prefix, the pair text ``<Instruct>: …\\n<Query>: …\\n<Document>: …`` truncated at its end to
``max_length - len(prefix) - len(suffix)`` tokens, and the fixed suffix; the ids are concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
# A document that keeps fewer tokens than this after truncation is flagged: the model barely saw it.
MIN_DOCUMENT_TOKENS = 8
# Pair texts tokenized per call, counted in characters: a long query is repeated in every pair, so the texts
# are built and tokenized a slice at a time and memory stays bounded whatever the request.
ENCODE_CHARS = 1 << 22


@dataclass(frozen=True)
class Truncation:
    """How much of one document the model sees: `kept` of its `total` tokens (in the pair's tokenization)."""

    kept: int
    total: int

    @property
    def truncated(self) -> bool:
        return self.kept < self.total

    @property
    def starved(self) -> bool:
        """Truncated to fewer than MIN_DOCUMENT_TOKENS tokens: its score says little about the document."""
        return self.truncated and self.kept < MIN_DOCUMENT_TOKENS


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
        # the document comes last in the recipe's template; its span in each pair text is found from these
        self._head, _, self._tail = template.partition("{document}")
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
        return self.encode_report(pairs, instruction, truncate=truncate)[0]

    def encode_report(
        self,
        pairs: Sequence[tuple[str, str]],
        instruction: str | None = None,
        *,
        truncate: bool = True,
        max_document_tokens: int | None = None,
    ) -> tuple[list[list[int]], list[Truncation]]:
        """The ids `encode` gives, and for each pair how many of its document's tokens they keep.

        A document's tokens are those of the pair's tokenization that cover any of its characters (with
        byte-level BPE the space before the document belongs to its first token). `max_document_tokens`
        also cuts each document after that many of its tokens (Cohere's max_tokens_per_doc); the ids are
        always a prefix of the pair's exact tokenization.
        """
        instruction = self.default_instruction if instruction is None else instruction
        ids: list[list[int]] = []
        report: list[Truncation] = []
        start = 0
        while start < len(pairs):
            stop, chars = start, 0
            while stop < len(pairs) and (stop == start or chars < ENCODE_CHARS):
                chars += len(pairs[stop][0]) + len(pairs[stop][1])
                stop += 1
            heads = [self._head.format(instruction=instruction, query=q) for q, _ in pairs[start:stop]]
            texts = [h + d + self._tail.format(instruction=instruction, query=q)
                     for h, (q, d) in zip(heads, pairs[start:stop])]
            encodings = self._tok.encode_batch(texts, add_special_tokens=False)
            for head, (_, doc), e in zip(heads, pairs[start:stop], encodings):
                begin, end = len(head), len(head) + len(doc)
                inside = [k for k, (a, b) in enumerate(e.offsets) if b > begin and a < end]
                keep = min(len(e.ids), self.pair_budget) if truncate else len(e.ids)
                if max_document_tokens is not None and len(inside) > max_document_tokens:
                    keep = min(keep, inside[0] + max_document_tokens)
                ids.append(self.prefix_ids + e.ids[:keep] + self.suffix_ids)
                report.append(Truncation(sum(1 for k in inside if k < keep), len(inside)))
            start = stop
        return ids, report


def unencodable(text: str) -> str | None:
    """Why a tokenizer cannot take `text` (a lone surrogate, which JSON and Python strings allow but UTF-8
    does not), or None. Such text is rejected, never replaced: a silent replacement would score other text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"holds a lone surrogate (U+{ord(text[exc.start]):04X} at character {exc.start}), which is not "
                "Unicode text; send valid UTF-8")
    return None


def check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, got {type(value).__name__}")
    problem = unencodable(value)
    if problem:
        raise InputError(f"{what} {problem}")
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
