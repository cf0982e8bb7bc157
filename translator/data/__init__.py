"""Data, from files to batches: reading corpora (`corpus`, `builtin_corpus`), lines and sentences
(`text`), tokenizers (`tokenizer`), datasets and batches (`dataset`)."""
