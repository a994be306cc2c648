"""Generation for online RL and evaluation: ``base`` (the interface) and ``hf`` (Hugging Face
backend). A vLLM backend will implement the same ``Generator`` protocol."""
