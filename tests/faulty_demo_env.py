"""A DemoEnv whose worker process hurts itself on cue, for tests/test_faults_workers.py.

Kept out of the test module so that spawned workers import only this and the demo env, not the
learner stack. Faults are files in `fault_dir`, named `<SIGNAL>@<n>.fault` (e.g. `SIGKILL@6`):
once the workers together have made `n` resets, the next worker to take a step claims the file
(unlinks it, so exactly one worker takes each fault) and sends itself that signal: a real
SIGSTOP or SIGKILL from a real process. `always-<SIGNAL>@<n>.fault` is never claimed: every step
of every worker (restarted ones included) takes the signal, the worker that always fails.
`NAN@<n>.fault` instead makes the claiming env return NaN in the "state" of its episode's last
observation (a broken sensor reading): the agent never acts on it (the demo env cannot step a
NaN action), but it reaches the replay buffer as a next observation.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from dsrl.envs.demo import DemoEnv


class FaultyDemoEnv(DemoEnv):
    def __init__(self, fault_dir: str, **overrides):
        super().__init__(**overrides)
        self.fault_dir = Path(fault_dir)
        self.poisoned = False

    def reset(self, seed: int | None = None):
        with open(self.fault_dir / "resets", "ab") as f:
            f.write(b".")
        self.poisoned = False
        return super().reset(seed)

    def step(self, action: np.ndarray, render: bool = True):
        resets = (self.fault_dir / "resets").stat().st_size
        for fault in sorted(self.fault_dir.glob("*.fault")):
            name, _, after = fault.stem.partition("@")
            if resets < int(after):
                continue
            if not name.startswith("always-"):
                try:
                    fault.unlink()
                except FileNotFoundError:
                    continue  # another worker claimed it
            if name == "NAN":
                self.poisoned = True
            else:
                os.kill(os.getpid(), getattr(signal, name.removeprefix("always-")))
        obs, reward, terminated, truncated, info = super().step(action, render)
        if self.poisoned and (terminated or truncated):
            obs = {**obs, "state": np.full_like(obs["state"], np.nan)}
        return obs, reward, terminated, truncated, info
