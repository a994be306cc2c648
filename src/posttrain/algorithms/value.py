"""PPO's critic and the actor-critic pair the shared loop trains.

The value model V_phi(s_t) is a causal-LM backbone with a scalar head, read at every position:
``...ForSequenceClassification`` with one label, i.e. exactly the reward model's architecture
(``algorithms/reward.py``), so a trained reward model initialises the critic with no mismatch
(InstructGPT, Ouyang et al. 2022, sec. 3.5, initialises the value function from the RM). Only its
backbone and ``score`` head are used; the class's own pooled forward is never called. Saved, the
critic is a normal Hugging Face folder that ``load_trained_reward_model`` reloads.

Why a separate model, also under LoRA. Sharing the policy's frozen base (a second adapter, or a
value head on the policy's trunk) would couple what must stay apart: under LoRA the reference
log-probs come from the policy with its adapter *disabled*, and a critic sitting on that base
would see the adapter switched off too; a critic adapter would need the policy's adapter off
during critic passes (and vice versa), i.e. two forwards that switch adapters inside one
autograd graph. A separate model is the simplest correct choice. Its cost:

- full fine-tune: a second set of weights + gradients + two AdamW moments (about 16 bytes per
  parameter in float32: ~2.2 GB for SmolLM2-135M, ~8 GB for a 0.5B model);
- LoRA (``use_lora``): a second *frozen* copy of the base (e.g. ~1 GB for Qwen2.5-0.5B in
  bfloat16) plus the critic's own small adapter and its full ``score`` head.

The value of the state before completion token t is read at the hidden state that predicts that
token: ``hidden[:, P - 1 : -1]``, the same alignment as ``TokenLogprobs``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from posttrain.config import TrainConfig
from posttrain.errors import ConfigError, PosttrainError
from posttrain.hub import resolve_model
from posttrain.reward_models import classification_parts, load_reward_model
from posttrain.train.forward import TokenLogprobs
from posttrain.train.sharding import no_split_modules


def load_value_model(config: TrainConfig, tokenizer: Any) -> nn.Module:
    """The trainable critic: from ``config.value_model`` (a reward model folder written by
    ``posttrain reward``: full weights or a LoRA adapter) or, when that is None, from the policy's
    own weights ``config.model`` with a fresh, seeded ``score`` head. Under ``use_lora`` the
    critic trains its own adapter (and its full head); otherwise all its weights."""
    fresh_head = not getattr(config, "value_model", None)  # the policy's weights + a new head
    name = config.model if fresh_head else config.value_model
    folder = resolve_model(name)
    adapter = Path(folder) / "adapter_config.json"
    try:
        if adapter.is_file():
            model = _load_adapter_critic(config, tokenizer, Path(folder), adapter)
        else:
            model = load_reward_model(dataclasses.replace(config, model=name), tokenizer)
    except PosttrainError as err:
        raise PosttrainError(f"value model {name!r}: {err}") from None
    if fresh_head:
        zero_value_head(model)
    vocab = model.get_input_embeddings().num_embeddings
    if vocab < len(tokenizer):
        raise ConfigError(
            f"value_model {name!r} has a vocabulary of {vocab} tokens but the policy's "
            f"tokenizer has {len(tokenizer)}: the critic reads the policy's token ids, so it must "
            "come from a model with the same tokenizer (e.g. a reward model trained from it)."
        )
    return model


def zero_value_head(model: nn.Module) -> None:
    """Start a fresh critic at V = 0 everywhere. A randomly initialised head on hidden states
    of norm ~O(10) predicts values of size ~0.5 that differ from token to token; GAE turns those
    differences into per-token advantages of pure noise, which the first rounds then train on
    (seen on SmolLM2: explained variance -4 to -12 and a falling accuracy, docs/rl.md). With a
    zero head the first round's advantages are the returns themselves (REINFORCE without a
    baseline), and the critic moves off zero as it learns; the backbone gets gradients from the
    second step on."""
    _, head = classification_parts(model)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.zero_()


def _load_adapter_critic(config: TrainConfig, tokenizer: Any, folder: Path, adapter: Path):
    """A LoRA reward model: its base, then its adapter (trainable). Without ``use_lora`` the
    adapter is merged and every weight trains."""
    from peft import PeftModel

    base_name = json.loads(adapter.read_text())["base_model_name_or_path"]
    base = load_reward_model(dataclasses.replace(config, model=base_name, use_lora=False),
                             tokenizer)
    model = PeftModel.from_pretrained(base, folder, is_trainable=True)
    if not config.use_lora:  # peft froze the base weights; merged, all of them train
        return model.merge_and_unload().requires_grad_(True)
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


class TokenValues(nn.Module):
    """forward(input_ids [B, T], num_targets C, attention_mask, position_ids) -> values [B, C]
    (float32): the score head on the hidden states at positions T-1-C .. T-2, i.e. V(s_t) for the
    state before each of the last C tokens."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        num_targets: int,
        attention_mask: torch.Tensor | None = None,  # [B, T]
        position_ids: torch.Tensor | None = None,  # [B, T]
    ) -> torch.Tensor:
        backbone, head = classification_parts(self.model)
        start = input_ids.shape[1] - 1 - num_targets
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state[:, start:-1]  # [B, C, H]
        return head(hidden).squeeze(-1).float()  # [B, C]


class ActorCritic(nn.Module):
    """Policy + critic: the one module the shared loop optimises, clips and checkpoints.

    ``param_groups`` gives the critic its own learning rate inside the one AdamW. AdamW's update
    is element-wise, so one AdamW with two parameter groups is exactly two AdamWs, except that the
    loop's gradient-norm clipping is global: a large critic gradient also shrinks the policy's
    step (and vice versa). Note that under Adam, ``vf_coef`` barely changes the critic's step
    size (Adam normalises the gradient's scale); it matters through that shared clipping norm
    and Adam's epsilon. ``value_learning_rate`` is the knob that sets how fast the critic moves.
    """

    def __init__(self, policy: nn.Module, critic: nn.Module):
        super().__init__()
        self.policy = policy
        self.critic = critic

    def param_groups(self, config: TrainConfig) -> list[dict[str, Any]]:
        value_lr = getattr(config, "value_learning_rate", None)
        value_lr = config.learning_rate if value_lr is None else value_lr
        groups: list[dict[str, Any]] = []
        policy = [p for p in self.policy.parameters() if p.requires_grad]
        critic = [p for p in self.critic.parameters() if p.requires_grad]
        if policy:
            groups.append({"params": policy})
        if critic:
            groups.append({"params": critic, "lr": value_lr})
        return groups


class ActorCriticForward(nn.Module):
    """What the loop calls (and what accelerate/DDP wraps): one module over both models, so that
    gradients of the policy and of the critic are synchronised by one forward.

    forward(input_ids, targets, ..., parts=) returns
      parts="policy": (logprobs [B, C], entropy [B, C] | None), as ``TokenLogprobs``;
      parts="critic": values [B, C];
      parts="both":   (logprobs, entropy, values), the training pass of PPO.
    """

    def __init__(self, model: ActorCritic):
        super().__init__()
        self.actor = TokenLogprobs(model.policy)
        self.critic = TokenValues(model.critic)
        # FSDP auto-wrap reads the root's layer classes
        self._no_split_modules = no_split_modules(model.policy, model.critic)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        targets: torch.Tensor,  # [B, C]
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        temperature: float = 1.0,
        return_entropy: bool = False,
        parts: Literal["policy", "critic", "both"] = "policy",
    ):
        if parts == "critic":
            return self.critic(input_ids, targets.shape[1], attention_mask, position_ids)
        logprobs, entropy = self.actor(input_ids, targets, attention_mask, position_ids,
                                       temperature, return_entropy)
        if parts == "policy":
            return logprobs, entropy
        values = self.critic(input_ids, targets.shape[1], attention_mask, position_ids)
        return logprobs, entropy, values
