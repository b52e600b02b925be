"""Data: readers (files -> typed examples) and batching (examples -> tokenized, bucketed batches)."""
from fastbert.data.batching import Encoded, Loader, Stream, TaskBatch, encode
from fastbert.data.readers import DataError, Example, read_table, read_text

__all__ = ["DataError", "Encoded", "Example", "Loader", "Stream", "TaskBatch", "encode", "read_table", "read_text"]
