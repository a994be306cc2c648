"""Generation for online RL and evaluation: ``base`` (the ``Generator`` interface and the
rollout layout) and three backends chosen by ``rollout_backend`` (``backends.py``): ``hf`` (our
decode loop), ``paged`` (transformers' continuous batching) and ``vllm`` (experimental)."""
