"""The one progress display: a tqdm bar drawn only on a terminal, and lines that go to logs too."""

from __future__ import annotations

import sys


class Progress:
    """A bar over ``total`` units (``initial`` done already) and ``write`` for one line per
    finished piece of work. Disabled, it draws and prints nothing. Use it as a context manager:
    the bar is cleared on exit, Ctrl-C included."""

    def __init__(self, total: int, unit: str, description: str, enabled: bool, initial: int = 0):
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.bar = tqdm(total=total, initial=initial, unit=unit, desc=description, leave=False,
                        dynamic_ncols=True, disable=None if enabled else True)

    def describe(self, text: str) -> None:
        self.bar.set_description_str(text)

    def status(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def update(self, count: int = 1) -> None:
        self.bar.update(count)

    def write(self, line: str, file=None) -> None:
        """Print ``line`` above the bar (to ``file``, default stdout), when enabled."""
        if self.enabled:
            self.bar.write(line, file=file or sys.stdout)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
