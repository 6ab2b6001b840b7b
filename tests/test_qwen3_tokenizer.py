"""Optional checks against the real Qwen3 tokenizer: set QRR_QWEN3_TOKENIZER to a folder holding it.

.ci/run points it at ../shared/fixtures/qwen3-tokenizer when that folder exists; a fresh clone skips these.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DOCS, QUERY, QWEN3_TOKENIZER, needs_export

if not QWEN3_TOKENIZER:
    pytest.skip("QRR_QWEN3_TOKENIZER is not set", allow_module_level=True)
needs_export()

from qrr.export.reference import RecipeTokenizer  # noqa: E402
from qrr.runtime.pairs import load_queries  # noqa: E402
from qrr.runtime.prompt import PREFIX, SUFFIX, TEMPLATE, PromptTokenizer  # noqa: E402

FOLDER = Path(QWEN3_TOKENIZER)
VLLM_TEMPLATE = "<Instruct>: {instruction}\n\n<Query>: {query}\n\n<Document>: {document}"


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FOLDER, padding_side="left")


def recipe_ids(hf, texts, max_length=8192):
    batch = RecipeTokenizer(hf, max_length).process_inputs(texts)
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def test_yes_no_ids(hf):
    assert hf.convert_tokens_to_ids("yes") == 9693
    assert hf.convert_tokens_to_ids("no") == 2152  # not 2132, a known peer bug


@pytest.mark.parametrize("max_length", [8192, 120])
def test_runtime_ids_equal_the_recipe(hf, max_length):
    queries = load_queries()
    pairs = [(QUERY, d) for d in DOCS] + [(q.query, d) for q in queries for d in q.documents]
    ours = PromptTokenizer(FOLDER / "tokenizer.json", max_length=max_length)
    texts = [ours.pair_text(q, d) for q, d in pairs]
    assert ours.encode(pairs) == recipe_ids(hf, texts, max_length)


def test_prompt_ids_are_pinned():
    tok = PromptTokenizer(FOLDER / "tokenizer.json")
    assert tok.prefix_ids[:3] == [151644, 8948, 198] and tok.prefix_ids[-3:] == [151644, 872, 198]
    assert len(tok.prefix_ids) == 39
    assert tok.suffix_ids == [151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271]
    head = [27, 641, 1235, 26818, 16246, 264, 3482, 2711, 3239, 11, 17179, 9760, 46769, 429, 4226, 279, 3239]
    body = [1128, 374, 279, 6722, 315, 5616]
    doc = [75692, 26818, 576, 6722, 315, 5616, 374, 26549, 13]
    # transformers example: fields joined with "\n" (198) — our reference
    pair = tok.encode([(QUERY, "The capital of China is Beijing.")])[0]
    assert pair[39:-9] == head + [198, 27, 2859, 26818] + body + [5267] + doc
    # vLLM / evaluation code: "\n\n" (271); an artifact can carry this template in its manifest
    vllm = PromptTokenizer(FOLDER / "tokenizer.json", template=VLLM_TEMPLATE)
    pair = vllm.encode([(QUERY, "The capital of China is Beijing.")])[0]
    assert pair[39:-9] == head + [271, 27, 2859, 26818] + body + [1939] + doc
    assert TEMPLATE != VLLM_TEMPLATE and PREFIX and SUFFIX
