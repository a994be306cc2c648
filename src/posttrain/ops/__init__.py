"""Pure tensor math: each formula is a function with its paper equation in the docstring.

- ``stats``: masked sum / mean / variance / whitening over real (unpadded) tokens.
- ``logprobs``: per-token log-probs and entropy without a full-vocabulary float32 log-softmax.
- ``sft``: the supervised negative log-likelihood of response tokens.
- ``preference``: DPO-family losses (sigmoid/cDPO, IPO, hinge, robust) and the Bradley-Terry
  reward-model loss.
- ``policy``: KL estimators, the PPO clipped surrogate and token-loss aggregation (GRPO, DAPO,
  Dr. GRPO, BNPO) that stays correct under gradient accumulation.
- ``advantages``: group (GRPO), leave-one-out (RLOO) and REINFORCE++ advantages, KL-shaped PPO
  rewards, GAE, the clipped value loss, explained variance and KL coefficient controllers.
"""
