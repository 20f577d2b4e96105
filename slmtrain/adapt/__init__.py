"""On-device personalisation: fine-tune a small model on the user's own data, or retrieve from it into the prompt.

data        JSONL records (``text``, ``prompt`` + ``completion``, ``messages``) -> token ids with loss masks; every
            unusable line counted with its reason
methods     full, lora, dora, qlora (peft; the frozen base in NF4), the PEFT adapter in transformers' module names
mezo        zeroth-order SGD (Malladi et al. 2023): two forward passes per seeded perturbation, nothing stored
planner     predicted peak memory and step time of every method on a device profile, and the measured peak
retrieval   chunked documents indexed with BM25 or MiniLM embeddings, top-k chunks put into the prompt
personal    the demo personal-data task: facts about a fictional user, training pairs and held-out questions
run         FinetuneOptions, the training loop and its outputs (adapter/, hf/, metrics.csv, result.json)
"""
