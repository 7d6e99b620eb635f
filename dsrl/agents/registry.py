"""The algorithms a run can train, by name: adding an algorithm is one entry in `ALGORITHMS`.

Each entry names the learner class and its config dataclass. The run builder
(`dsrl.training.build`) creates the learner with `Learner.create(seed, observation_spec,
latent_dim, config, execution=...)`; a learner whose update runs the frozen base policy itself
(`uses_base_policy`) also receives the steering's base policy, noise parametrisation and
query_freq.
"""

from __future__ import annotations

import dataclasses

from dsrl.agents.noise_aliasing.config import NoiseAliasingConfig
from dsrl.agents.noise_aliasing.learner import NoiseAliasingLearner
from dsrl.agents.pixel_sac.config import PixelSACConfig
from dsrl.agents.pixel_sac.learner import PixelSACLearner


@dataclasses.dataclass(frozen=True)
class Algorithm:
    learner: type  # has `create(...)`, see the module docstring
    config: type  # a frozen dataclass with `from_config_dict`
    # True: the update calls the base policy (DSRL-NA's alias targets), so the learner is
    # given it at creation, and it must run in this process.
    uses_base_policy: bool = False


ALGORITHMS: dict[str, Algorithm] = {
    "pixel_sac": Algorithm(PixelSACLearner, PixelSACConfig),
    "dsrl_na": Algorithm(NoiseAliasingLearner, NoiseAliasingConfig, uses_base_policy=True),
}
NAMES = tuple(ALGORITHMS)


def get(name: str) -> Algorithm:
    """The algorithm called `name`; an unknown name is a ValueError listing the known ones."""
    if name not in ALGORITHMS:
        raise ValueError(f"agent.algorithm must be one of {NAMES}, got {name!r}")
    return ALGORITHMS[name]
