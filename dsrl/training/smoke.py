"""`--smoke`: any flag line (a reference script's, the real robot's) at a size that reaches its
first gradient updates within minutes on a CPU, to check that the pipeline runs end to end.

The smoke values replace the flag line's (so `bash scripts/run_libero.sh --smoke` works as is);
`--config.<path>=<value>` given on the same command line still wins. A resumed run keeps its saved
config. What it changes, and why:

  loop.max_steps 40, loop.batch_size 32          a few update blocks, each cheap on a CPU
  loop.start_online_updates 16                   the reference waits for 500-1000 transitions
  loop.first_update_grad_steps 0                 (10,000-50,000 env steps) before the first update
  loop.eval_episodes 1 (0 stays 0)               one evaluation episode of the mode and of the
  loop.eval_sampled / eval_base_warmup off       base policy at step 0, one at the end
  loop.eval_interval 40, loop.log_interval 10
  replay.capacity 10000                          the reference's max_steps / multi_grad_step would
                                                 hold 2 transitions at max_steps 40
  env.kwargs.max_episode_steps 100 (simulation)  shorter episodes; the robot keeps its 200
  with --pi0_variant tiny:                       a random tiny Pi0 (no checkpoint to download,
    base_policy.checkpoint random,               unless --pi0_checkpoint names one) with the
                                                 reference's 50-step chunk, so
    base_policy.action_horizon 50                --query_freq 20 / 50 fit (no hub access needed)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsrl import presets

SMOKE_LOOP = {
    "loop.max_steps": "40",
    "loop.batch_size": "32",
    "loop.start_online_updates": "16",
    "loop.first_update_grad_steps": "0",
    "loop.eval_interval": "40",
    "loop.log_interval": "10",
    "loop.eval_sampled": "false",
    "loop.eval_base_warmup": "false",
    "loop.checkpoint_interval": "-1",
    "replay.capacity": "10000",
}
SMOKE_EPISODE_STEPS = 100
TINY_PI0_HORIZON = 50  # the reference's LIBERO / Aloha chunk length


def smoke_overrides(preset: str, flags: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (RunConfig path, value) overrides of `--smoke` for `preset` and the given flags."""
    base = presets.get_preset(preset)
    out = dict(SMOKE_LOOP)
    if int(base.loop.get("eval_episodes", 10)) > 0:
        out["loop.eval_episodes"] = "1"
    if base.env.name != "droid":  # a real (or rehearsed) robot keeps its episode length
        out["env.kwargs.max_episode_steps"] = str(SMOKE_EPISODE_STEPS)
    variant = flags.get("pi0_variant") or base.base_policy.get("variant", "full")
    remote = flags.get("pi0_remote") or base.base_policy.get("remote", "")
    if variant == "tiny" and not remote:
        if not flags.get("pi0_checkpoint"):
            out["base_policy.checkpoint"] = "random"
        out["base_policy.action_horizon"] = str(TINY_PI0_HORIZON)
    return list(out.items())
