"""Does a run's critic tell the latents it tried apart by how their episodes ended?

    python scripts/critic_ranking.py <run dir> [--step N]

Reads one checkpoint of a DSRL-SAC or DSRL-NA run (the learner and its replay buffer), takes the
first transition of every finished training episode in the buffer and scores its latent with the
critic the actor maximises, Q(s_0, z) (DSRL-NA: the noise critic Q^W). An episode counts as a
success when it ended before the longest one in the buffer (episodes end early only on success
where the env ends them there, as the LIBERO and Can presets do). Prints ONE JSON object:

- `auc_latent_critic`: the probability that a successful episode's latent is valued above a
  failed one's (0.5: the critic cannot tell them apart; 1.0: it separates them);
- for DSRL-NA also `auc_action_critic` (Q^A on the executed chunk, which Q^A was fitted on), the
  correlation of Q^W with Q^A on those tried pairs, and on the stored aliases at s_0 the
  correlation of Q^W with Q^A within each state and Q^A's spread there;
- the critic's value of the actor's mode at s_0 and the counts it was computed from.

docs/dsrl_na.md, "In-sample distillation", has what it showed on the band Pi0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsrl.agents import spec  # noqa: E402
from dsrl.agents.common import select_observations  # noqa: E402
from dsrl.data.replay_buffer import ReplayBuffer  # noqa: E402
from dsrl.networks import reduce_ensemble  # noqa: E402
from dsrl.training import build, config_io  # noqa: E402
from dsrl.training.buffer_layout import checkpoint_template  # noqa: E402
from dsrl.training.loop_config import LoopState  # noqa: E402
from dsrl.utils.checkpoints import RunCheckpointer  # noqa: E402


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties counted half; None without both."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def first_transitions(buffer: ReplayBuffer) -> tuple[dict, np.ndarray]:
    """(the first transition of each finished episode, success per episode)."""
    bounds = buffer.trajectory_bounds
    if len(bounds) < 2:
        raise ValueError(
            f"the buffer holds {len(bounds)} finished episode(s); rank latents on a checkpoint "
            "saved after a few dozen training episodes"
        )
    lengths = np.array([end - start for start, end in bounds])
    success = lengths < lengths.max()
    starts = np.array([start for start, _ in bounds])  # ring slots already
    return buffer.get(starts), success


def rank(run_dir: Path, step: int | None = None) -> dict:
    config = config_io.load_config(resume=str(run_dir))
    base_policy = build.make_base_policy(config)
    steering = build.make_steering(config, base_policy)
    env = build.agent_env_fn(config)()
    try:
        observation_spec = env.spec.observation_spec
    finally:
        env.close()
    template = build.make_agent(config, observation_spec, steering)
    checkpointer = RunCheckpointer(run_dir, read_only=True)
    try:
        restored = checkpointer.restore(checkpoint_template(template), step=step)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet")
    tree, buffer = restored
    if buffer is None:
        raise FileNotFoundError(f"{run_dir}'s checkpoint was saved without its replay buffer")
    agent = tree["agent"]
    first, success = first_transitions(buffer)
    obs = select_observations(first[spec.OBSERVATIONS], "observations", pixels=agent.has_pixels)
    latents = np.asarray(first[spec.LATENTS], np.float32)
    q_latent = agent.latent_q(obs, latents)
    mode = agent.mode_latents(obs)
    out = {
        "run_dir": str(run_dir),
        "step": LoopState.from_tree(tree["counters"]).grad_steps,
        "algorithm": config.agent.algorithm,
        "episodes": int(len(success)),
        "successes": int(success.sum()),
        "auc_latent_critic": auc(q_latent, success),
        "q_mode_s0": float(agent.latent_q(obs, mode).mean()),
    }
    if spec.ACTION_CHUNKS in first:  # DSRL-NA: Q^A on what it was fitted on, and on the aliases
        chunks = np.asarray(first[spec.ACTION_CHUNKS], np.float32).reshape(len(success), -1)
        q_action = action_q(agent, obs, chunks)
        out["auc_action_critic"] = auc(q_action, success)
        out["corr_latent_action_critic_on_tried"] = float(np.corrcoef(q_latent, q_action)[0, 1])
        if spec.ALIAS_LATENTS in first:
            out |= alias_agreement(agent, obs, first)
    return out


def action_q(agent, obs, chunks) -> np.ndarray:
    """DSRL-NA's Q^A(s, a) on executed chunks (B, qf * A), heads reduced as for Q^W."""
    params = agent.action_critic.params
    features = agent.critic_features(params, obs)
    heads = agent.critic_def.apply({"params": params}, features, chunks, method="head")
    return np.asarray(reduce_ensemble(heads, agent.config.critic_reduction))


def alias_agreement(agent, obs, first) -> dict:
    """Q^W against Q^A on the K aliases stored at each first state (centred per state)."""
    z = np.asarray(first[spec.ALIAS_LATENTS], np.float32)
    e, k = z.shape[:2]
    tiled = {key: np.repeat(np.asarray(v), k, axis=0) for key, v in obs.items()}
    chunks = np.asarray(first[spec.ALIAS_CHUNKS], np.float32).reshape(e * k, -1)
    q_action = action_q(agent, tiled, chunks)
    q_latent = agent.latent_q(tiled, z.reshape(e * k, -1))
    qa, qw = q_action.reshape(e, k), q_latent.reshape(e, k)
    qa_c, qw_c = qa - qa.mean(1, keepdims=True), qw - qw.mean(1, keepdims=True)
    return {
        "corr_latent_action_critic_on_aliases": float(
            np.corrcoef(qa_c.ravel(), qw_c.ravel())[0, 1]
        ),
        "action_critic_std_over_aliases": float(qa.std(1).mean()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--step", type=int, default=None, help="a checkpoint step (default: newest)")
    args = p.parse_args(argv)
    if not (args.run_dir / "config.json").is_file():
        p.error(f"{args.run_dir} is not a run directory (it has no config.json)")
    print(json.dumps(rank(args.run_dir, args.step)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
