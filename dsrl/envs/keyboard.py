"""Operator keyboard for real-robot episodes: early stop, success labels, scene-reset pauses.

`TerminalKeyboard` reads single keys from the controlling terminal WITHOUT Enter, and works over
SSH: stdin is put in cbreak mode (termios; no echo, no line buffering, Ctrl-C still interrupts)
for the lifetime of the object and restored on `close()`, at exit, and when the context manager
leaves (also after an exception). Non-blocking polls use `select` on stdin. No debugger prompt
is involved anywhere (the reference dropped into pdb between episodes).

`ScriptedKeyboard` replays scripted keys, so tests and dry runs drive the same code path.

Both implement `Keyboard`: `poll() -> str | None` (a key pressed since the last poll, never
blocks) and `wait(allowed, prompt) -> str` (prints the prompt, blocks until one of `allowed`).
"""

from __future__ import annotations

import atexit
import collections
import sys
from collections.abc import Callable, Iterable
from typing import Protocol

ENTER_KEYS = ("\n", "\r")


class Keyboard(Protocol):
    def poll(self) -> str | None: ...

    def wait(self, allowed: Iterable[str], prompt: str) -> str: ...

    def close(self) -> None: ...


def _print_above_bars(text: str) -> None:
    """A prompt on its own line, above the loop's progress bar (tqdm redraws it below)."""
    import tqdm

    tqdm.tqdm.write(text)
    sys.stdout.flush()


class TerminalKeyboard:
    """Single-key input from a terminal (stdin must be a TTY)."""

    def __init__(self, stream=None, printer: Callable[[str], None] | None = None):
        import termios
        import tty

        self._stream = stream if stream is not None else sys.stdin
        if not self._stream.isatty():
            raise RuntimeError(
                "the real-robot loop needs an interactive terminal for the operator's keys "
                "(q: stop, 1/0: success label, Enter: continue); run it in a terminal or over "
                "`ssh -t`, not with stdin redirected"
            )
        self._fd = self._stream.fileno()
        self._termios = termios
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        self._printer = printer or _print_above_bars
        atexit.register(self.close)

    def _read_ready(self, timeout: float | None) -> str | None:
        import os
        import select

        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return None
        data = os.read(self._fd, 1)
        return data.decode(errors="replace") if data else None

    def poll(self) -> str | None:
        return self._read_ready(0.0)

    def wait(self, allowed: Iterable[str], prompt: str) -> str:
        allowed = tuple(allowed)
        # Keys typed during the episode must not answer the prompt.
        while self._read_ready(0.0) is not None:
            pass
        self._printer(prompt)
        while True:
            key = self._read_ready(None)
            if key in allowed:
                return key

    def close(self) -> None:
        if self._saved is not None:
            self._termios.tcsetattr(self._fd, self._termios.TCSADRAIN, self._saved)
            self._saved = None

    def __enter__(self) -> TerminalKeyboard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ScriptedKeyboard:
    """Replays scripted keys: `answers` for prompts (`wait`), `polls` for in-episode polls.

    `poll()` consumes one entry of `polls` (a key, or None for "nothing pressed"; None once the
    list is exhausted). `wait(allowed)` consumes `answers` until an allowed key (skipping others,
    as an operator's stray keys would be) and raises if they run out, so a test that forgets a
    label fails with a clear message instead of hanging. Prompts are recorded in `prompts`.
    Two queues, because how many polls an episode makes depends on when it ends.
    """

    def __init__(self, answers: Iterable[str] = (), polls: Iterable[str | None] = ()):
        self._answers = collections.deque(answers)
        self._polls = collections.deque(polls)
        self.prompts: list[str] = []

    def poll(self) -> str | None:
        return self._polls.popleft() if self._polls else None

    def wait(self, allowed: Iterable[str], prompt: str) -> str:
        allowed = tuple(allowed)
        self.prompts.append(prompt)
        while self._answers:
            key = self._answers.popleft()
            if key in allowed:
                return key
        raise RuntimeError(f"ScriptedKeyboard ran out of answers at prompt {prompt!r}")

    def close(self) -> None:
        pass
