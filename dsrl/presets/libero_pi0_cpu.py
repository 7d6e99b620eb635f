"""LIBERO on a CPU with Pi0: DSRL steering the small Pi0 this repository fine-tunes itself.

The same task, layouts, agent and loop as `libero_cpu` (libero_object task 8, "pick up the
chocolate pudding and place it in the basket"; 50 fixed evaluation layouts from robosuite's
placement sampler, disjoint from the demonstrations' and drawn from the run's seed, so each seed
evaluates its own 50), but the frozen base policy is a Pi0: the
shipped `dsrl/assets/pi0_libero_cpu` (`Pi0Config.mini`, made by scripts/make_pi0_libero.py from
scripted demonstrations in LeRobot's layout). Both cameras (64x64) and the prompt go through SigLIP
and the Gemma prefix, the latent is the action expert's initial noise, and the actions come back
through LIBERO's transforms (norm stats; `libero_no_delta`: the actions are LIBERO's OSC deltas as
they are). Its state is "policy_state" (11-d: gripper position and fingers, object and basket
relative to the gripper; "observation/state", `pi0_state=True`): with pixels alone a model this
size does not learn the grasp in the time a CPU allows (see docs/finetune_pi0.md). Base success
over the maker's layouts 0-49: 0.80 with i.i.d. noise, 0.34 with the all-zero noise, where the
untrained actor's mode starts (its demonstrations hold still before
closing, so episodes run to 180 steps). DSRL-SAC lifted the mode to 1.00 on seeds 0-2, and DSRL-NA
(`--algorithm dsrl_na`) to 0.98-1.00 (docs/finetune_pi0.md, "Steering it"). A base inside the
proof's band (0.34 i.i.d., 0.02 zero latent) ships beside it:
`--config.base_policy.checkpoint=libero_cpu_band`. The agent sees what it sees in the LIBERO
preset: the 64x64 agent view and the 8-d state. One 16-d noise vector is repeated over the 16-step
chunk ('repeat', the reference's Pi0 mapping); 8 steps of each chunk are executed per query.
"""

from __future__ import annotations

from dsrl.presets import libero_cpu


def get_config():
    config = libero_cpu.get_config()
    config.env.kwargs.render_wrist = True  # Pi0 reads both cameras
    config.env.kwargs.pi0_state = True
    # Its demonstrations hold still before closing and close longer (scripts/make_pi0_libero.py
    # --dwell_steps 6 --close_steps 20): ~15 steps more than the flow MLP's.
    config.env.kwargs.max_episode_steps = 180
    config.base_policy = {"kind": "pi0", "checkpoint": "libero_cpu"}
    config.log.prefix = "dsrl_libero_pi0_cpu"
    config.log.wandb_project = "DSRL_libero_pi0_cpu"
    return config
