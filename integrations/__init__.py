"""qrr.integrations: qrr as the reranker of RAG frameworks, one thin module each (the `integrations` extra).

- `qrr.integrations.langchain.QrrRerank`: a LangChain document compressor (ContextualCompressionRetriever).
- `qrr.integrations.llama_index.QrrRerank`: a LlamaIndex node postprocessor.
- `qrr.integrations.haystack.QrrRanker`: a Haystack ranker component.

Each takes `model`: an artifact folder, a published artifact's hub repo id, a running `qrr serve` URL, or a scorer
already made (`qrr.runtime.Reranker` or `RerankClient`). None imports torch.
"""

INSTALL = "pip install -e '.[integrations]' in the qrr clone"
