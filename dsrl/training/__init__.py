"""The DSRL training loop, steered rollouts and evaluation (shared by simulation and real robots)."""

from dsrl.steering import Steering
from dsrl.training.evaluation import EvalResult, eval_seeds, evaluate, summarize
from dsrl.training.loop import (
    LoopConfig,
    LoopState,
    TrainResult,
    checkpoint_template,
    example_transition,
    restore,
    train,
    train_seeds,
)
from dsrl.training.rollout import (
    Episode,
    agent_observation,
    run_episodes,
    stack_observations,
)

__all__ = [
    "EvalResult",
    "Episode",
    "LoopConfig",
    "LoopState",
    "Steering",
    "TrainResult",
    "agent_observation",
    "checkpoint_template",
    "eval_seeds",
    "evaluate",
    "example_transition",
    "restore",
    "run_episodes",
    "stack_observations",
    "summarize",
    "train",
    "train_seeds",
]
