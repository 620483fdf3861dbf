"""Using a model: chat, the OpenAI-compatible server, evaluation, export (transformers, GGUF), benchmarks."""
