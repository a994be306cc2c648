"""``push_to_hub``: upload the finished model folder (what ``save_pretrained`` wrote, the
tokenizer, ``posttrain_config.yaml`` and ``metrics.jsonl``; not checkpoints or tensorboard logs)
with ``huggingface_hub``. The token is checked before training starts, so a missing login fails
at once instead of after the run."""

from __future__ import annotations

from pathlib import Path

from posttrain.errors import ConfigError, PosttrainError

SKIPPED = ["checkpoints/**", "tensorboard/**", "*.tmp*"]


def hub_login_check() -> None:
    from huggingface_hub import HfApi

    try:
        HfApi().whoami()
    except Exception as err:  # noqa: BLE001 - no token, offline, expired: all the same to a user
        raise ConfigError(
            f"push_to_hub needs a Hugging Face token ({type(err).__name__}: {err}); run "
            "`huggingface-cli login` or set HF_TOKEN, or turn push_to_hub off."
        ) from None


def push_folder(output_dir: str, repo_id: str | None, private: bool) -> str:
    """Create ``repo_id`` (or reuse it) and upload ``output_dir``; returns the repository URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = repo_id or Path(output_dir).resolve().name
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(output_dir), repo_id=repo.repo_id,
                          ignore_patterns=SKIPPED, commit_message="posttrain: trained model")
    except Exception as err:  # noqa: BLE001
        raise PosttrainError(f"pushing {output_dir} to the hub as {repo_id!r} failed "
                             f"({type(err).__name__}: {err}); the model is saved locally in "
                             f"{output_dir}.") from None
    return getattr(repo, "url", f"https://huggingface.co/{repo.repo_id}")
