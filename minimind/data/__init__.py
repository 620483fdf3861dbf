"""Data: the tokenizer, datasets and their token caches, the course corpus, MiniMind's downloads."""
from .datasets import (
                       IGNORE_INDEX,
                       DPODataset,
                       PretrainDataset,
                       RLPromptDataset,
                       SFTDataset,
                       chat_labels,
                       pad_collate,
                       pad_sequences,
                       token_file_for,
                       tokenize_pretrain,
)
from .records import DataError, check_file, iter_jsonl, iter_texts, read_jsonl, to_hf_dataset

__all__ = ["IGNORE_INDEX", "DataError", "DPODataset", "PretrainDataset", "RLPromptDataset", "SFTDataset",
           "chat_labels", "check_file", "iter_jsonl", "iter_texts", "pad_collate", "pad_sequences", "read_jsonl",
           "to_hf_dataset", "token_file_for", "tokenize_pretrain"]
