"""The loop's progress bars: one that moves in every phase of a run.

  warm-up     transitions collected toward the first update (with env steps and, where the
              preset waits for whole trajectories, trajectories), one tick per chunk;
  train       gradient steps toward `max_steps`, with env steps, buffer size and the last
              evaluation's success rate;
  eval        evaluation episodes finished (every noise source of one evaluation together).

Bars write to stderr through tqdm and disappear when their phase ends (`leave=False`), except the
training bar. `enabled=False` (--no_progress) shows nothing.
"""

from __future__ import annotations

import tqdm


class Progress:
    def __init__(self, enabled: bool, max_steps: int, grad_steps: int):
        self.enabled = enabled
        self.max_steps = max_steps
        self._grad_initial = grad_steps
        self._train: tqdm.tqdm | None = None
        self._warmup: tqdm.tqdm | None = None

    def _bar(self, **kwargs) -> tqdm.tqdm:
        return tqdm.tqdm(dynamic_ncols=True, disable=not self.enabled, **kwargs)

    # -- warm-up ------------------------------------------------------------------------------
    def warmup(self, needed: int, have: int, env_steps: int) -> None:
        """Opens (once) the warm-up bar: `have` of `needed` transitions collected."""
        if self._warmup is None and self._train is None:
            self._warmup = self._bar(
                total=needed, initial=min(have, needed), desc="warm-up", unit="transition"
            )
            self._warmup.set_postfix(env_steps=env_steps, refresh=False)

    def warmup_chunk(self, queries: int, env_steps: int, trajs: str = "") -> None:
        bar = self._warmup
        if bar is None:
            return
        bar.update(min(queries, max(bar.total - bar.n, 0)))
        postfix = {"env_steps": env_steps} | ({"trajs": trajs} if trajs else {})
        bar.set_postfix(postfix, refresh=False)

    # -- training -----------------------------------------------------------------------------
    def train_bar(self) -> tqdm.tqdm:
        if self._warmup is not None:
            self._warmup.close()
            self._warmup = None
        if self._train is None:
            self._train = self._bar(
                total=self.max_steps, initial=self._grad_initial, desc="train", unit="grad"
            )
        return self._train

    def grad_steps(self, count: int, **postfix) -> None:
        bar = self.train_bar()
        bar.update(count)
        if postfix:
            bar.set_postfix(postfix, refresh=False)

    # -- evaluation ---------------------------------------------------------------------------
    def evaluation(self, episodes: int) -> tqdm.tqdm:
        """A bar of `episodes` evaluation episodes; close it when the evaluation is done."""
        return self._bar(total=episodes, desc="eval", unit="episode", leave=False)

    def write(self, text: str) -> None:
        """A line that does not break the bars."""
        tqdm.tqdm.write(text)

    def close(self) -> None:
        for bar in (self._warmup, self._train):
            if bar is not None:
                bar.close()
        self._warmup = self._train = None
