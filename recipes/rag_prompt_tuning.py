"""LlamaIndex RAG: tune the QA and refine templates of a query engine from graded answers.

A vector index over the Northwind Outfitters help pages (recipes/data) answers customer
questions. The guide compares each answer with a reference answer and says what was wrong;
OptoPrime sees the trace (query -> retrieval -> synthesis -> LLM call with the template) and
rewrites the templates.

    python recipes/rag_prompt_tuning.py --dry-run     # MockLLM, prints the trace and the prompt
    python recipes/rag_prompt_tuning.py --epochs 2    # OPENAI_BASE_URL / OPENAI_API_KEY / OPTO_MODEL
"""

from __future__ import annotations

from common import answer_feedback, keyword_vector, load_json

QA_TEMPLATE = (
    "Context information is below.\n---------------------\n{context_str}\n---------------------\n"
    "Given the context information and not prior knowledge, answer the query.\n"
    "Query: {query_str}\nAnswer: "
)
REFINE_TEMPLATE = (
    "The original query is as follows: {query_str}\nWe have provided an existing answer: "
    "{existing_answer}\nWe have the opportunity to refine the existing answer (only if needed) "
    "with some more context below.\n------------\n{context_msg}\n------------\n"
    "Given the new context, refine the original answer to better answer the query. If the "
    "context isn't useful, return the original answer.\nRefined Answer: "
)
OBJECTIVE = (
    "Customers ask short factual questions about Northwind Outfitters. Answers must be correct, "
    "taken from the context, and as short as possible (a number or a few words)."
)
INPUT_KEY = "question"
SETTINGS = {"batch_size": 3}

_data = load_json("northwind_qa.json")
train = _data["train"]
val = _data["val"]


def build_app(dry_run: bool = False):
    from llama_index.core import Document, PromptTemplate, VectorStoreIndex
    from llama_index.core.embeddings import BaseEmbedding

    from opto_adapters.llama_index import OptoTracer

    class KeywordEmbedding(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return keyword_vector(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return keyword_vector(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return keyword_vector(text)

    docs = [Document(text=f"{d['title']}\n{d['text']}", doc_id=d["id"])
            for d in load_json("northwind_docs.json")]
    index = VectorStoreIndex.from_documents(docs, embed_model=KeywordEmbedding())
    if dry_run:
        from llama_index.core.llms import MockLLM

        llm = MockLLM(max_tokens=24)
    else:
        from llama_index.llms.openai_like import OpenAILike

        from opto_adapters.train.recipe import app_model

        cfg = app_model()
        llm = OpenAILike(model=cfg.model, api_base=cfg.base_url or "https://api.openai.com/v1",
                         api_key=cfg.api_key, is_chat_model=True, context_window=cfg.context_window,
                         max_tokens=cfg.max_tokens, timeout=cfg.timeout, max_retries=1)
    engine = index.as_query_engine(
        llm=llm,
        similarity_top_k=2,
        text_qa_template=PromptTemplate(QA_TEMPLATE),
        refine_template=PromptTemplate(REFINE_TEMPLATE),
    )
    # the two templates given above (not the synthesizer's chat_content_refine_template)
    return OptoTracer(engine, include=["*.text_qa_template", "*.refine_template"])


def guide(example, output):
    return answer_feedback(example["answer"], output)


if __name__ == "__main__":
    from opto_adapters.cli import run_recipe

    raise SystemExit(run_recipe(__file__))
