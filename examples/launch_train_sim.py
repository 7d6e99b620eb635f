"""Launch DSRL training in simulation (the embedded demo, LIBERO or Aloha).

    python examples/launch_train_sim.py --env demo
    python examples/launch_train_sim.py --env libero --seed 0 --max_steps 500000 ...
    python examples/launch_train_sim.py --env libero --config.agent.num_qs=2 --config.env.num_envs=4
    python examples/launch_train_sim.py --resume runs/dsrl_pi0_libero_20250101_120000_s0
    python examples/launch_train_sim.py --eval_only runs/dsrl_demo_20250101_120000_s0 \
        --checkpoint_step 1000 --eval_episodes 50 --eval_seeds 0,1,2   # evaluate, no training
    python examples/launch_train_sim.py --eval_only --base_policy_only --env libero

The whole launcher is `dsrl.training.cli.main_sim`; this file only calls it. The preset
`dsrl/presets/<env>.py` gives every value; the reference's flag names (`--batch_size --max_steps
--multi_grad_step --query_freq --action_magnitude --resize_image --hidden_dims --num_qs
--target_entropy ...`, the table `dsrl.training.flags.FLAGS`) override it, and
`--config.<path>=<value>` overrides any value of the run config (`dsrl.training.config.RunConfig`:
sections env, base_policy, steering, agent, execution, loop, replay, log). The final config is
written to `<run_dir>/config.json`; `--resume <run_dir>` reloads it and continues from the latest
checkpoint (counters, replay buffer, agent and RNG streams), applying only values given again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dsrl first

if __name__ == "__main__":
    from dsrl.utils.hugepages import restart_with_hugepages

    restart_with_hugepages()  # may re-execute itself once, before the heavy imports

    from dsrl.training import cli

    sys.exit(cli.main_sim())
