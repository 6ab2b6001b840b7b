"""Request bodies of every route, strict: no string or boolean is coerced to a number, and text that no
tokenizer can encode (a lone surrogate) is refused with the field named. Unknown fields are ignored, so
clients that send more (Cohere's `priority`, `rank_fields`) still work.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from qrr.runtime.prompt import unencodable

STRICT = ConfigDict(strict=True, extra="ignore")


def _encodable(text: str) -> str:
    problem = unencodable(text)
    if problem:
        raise ValueError(problem)
    return text


def _document_text(value: Any) -> Any:
    """A document is a string or an object with a string "text" (Cohere, Jina); other fields are ignored."""
    if isinstance(value, dict):
        if not isinstance(value.get("text"), str):
            raise ValueError('a document object needs a string "text"')
        return value["text"]
    if not isinstance(value, str):
        raise ValueError('a document is a string or an object with a string "text"')
    return value


Text = Annotated[str, AfterValidator(_encodable)]
DocumentText = Annotated[
    Text,
    BeforeValidator(_document_text),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "object", "properties": {"text": {"type": "string"}},
                                                   "required": ["text"]}]}),
]
Count = Annotated[int, Field(ge=1)]


class RerankRequest(BaseModel):
    """Cohere v1 and Jina (`POST /v1/rerank`)."""

    model_config = STRICT
    model: str | None = None
    query: Text
    documents: list[DocumentText]
    top_n: Count | None = None
    return_documents: bool = Field(default=True, description="Jina's default; Cohere v1 clients ignore the text")
    max_tokens_per_doc: Count | None = Field(default=None, description="cut each document after this many tokens")
    instruction: Text | None = None
    truncate: bool = Field(default=True, description="truncate long documents as the model card does; false: 413")


class RerankRequestV2(RerankRequest):
    """Cohere v2 (`POST /v2/rerank`): the same fields, documents not returned unless asked."""

    return_documents: bool = False


class TEIRequest(BaseModel):
    """Hugging Face text-embeddings-inference (`POST /rerank`)."""

    model_config = STRICT
    query: Text
    texts: list[Text]
    raw_scores: bool = Field(default=False, description="the logit log P(yes)/P(no) instead of P(yes)")
    return_text: bool = False
    truncate: bool = Field(default=False, description="TEI's default: a text over the window is a 413")
    truncation_direction: Literal["Right", "right", "Left", "left"] = "Right"
    instruction: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_cohere(cls, data: Any) -> Any:
        if isinstance(data, dict) and "documents" in data and "texts" not in data:
            raise ValueError('/rerank takes the TEI shape {"query", "texts"}; '
                             "post documents to /v1/rerank or /v2/rerank")
        return data


class Pair(BaseModel):
    model_config = STRICT
    query: Text
    document: Text


class ScoreRequest(BaseModel):
    """qrr's own (`POST /v1/score`): explicit pairs, scores in order."""

    model_config = STRICT
    pairs: list[Pair]
    instruction: Text | None = None
    truncate: bool = True
