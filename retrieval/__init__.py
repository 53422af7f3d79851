"""Live RAG building blocks: chunking, embedding, the Milvus vector store and answering.

Plain Python with no Kafka imports; the indexer and query agents in ``streams`` call it.
"""

from __future__ import annotations
