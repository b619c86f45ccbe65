"""Errors a user can act on, as opposed to bugs: the one hierarchy, all here.

The CLI catches `VaelabError`, prints its message and exits 2 without a traceback. Each
subclass says whose input was wrong: a study file (`SpecError`), a dataset (`DataError`),
how a study was launched or resumed (`RunnerError`), the tracking store (`TrackingError`,
`StudyNotFoundError`) or what a report can be made of (`ReportError`). A `SpecError` names
the file, the key path and the bad value so a researcher can go straight to the line in
the YAML that is wrong. Imports nothing of vaelab, so every module can raise these.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional


class VaelabError(Exception):
    """Base of every error that is the user's to fix (bad spec, missing data, ...)."""


class DataError(VaelabError):
    """A dataset file is missing, corrupt or fails its checksum; the message says what to do."""


class MissingDataError(DataError, FileNotFoundError):
    """Dataset files are not where they were looked for."""


class RunnerError(VaelabError):
    """A study cannot be launched or resumed as asked (storage, names, cluster)."""


class TrackingError(VaelabError):
    """The tracking server or database cannot be used (unreachable, misconfigured)."""


class StudyNotFoundError(VaelabError, LookupError):
    """No MLflow experiment (or no study run of the given name) for the study name."""


class ReportError(VaelabError, ValueError):
    """The study's MLflow content cannot be turned into a report (named cause)."""


class _Missing:
    """Marks a value that is absent (a required key), so it reads as such."""

    def __repr__(self) -> str:
        return "(missing)"


MISSING: Any = _Missing()


def format_value(value: Any, limit: int = 120) -> str:
    """Show a value the way it would be written in YAML, shortened for one line."""
    if value is MISSING:
        text = "(missing)"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, str):
        text = repr(value) if value == "" or value != value.strip() else value
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(format_value(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {format_value(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SpecError(VaelabError):
    """One problem in a search-space or study file.

    str() reads `ablations/x.yaml: axes.depth.grid[2]: 7 — depth must be in 1..5`,
    followed by ` (line N)` when the YAML position of the key is known.
    """

    def __init__(
        self,
        file: str,
        key_path: str,
        value: Any,
        message: str,
        line: Optional[int] = None,
    ) -> None:
        self.file = str(file)
        self.key_path = key_path or "(root)"
        self.value = value
        self.message = message
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.file}: {self.key_path}: {format_value(self.value)} — {self.message}{where}"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Exception pickling rebuilds from args; ours has several (errors may cross
        # process boundaries, e.g. a Ray worker validating a trial config).
        return (type(self), (self.file, self.key_path, self.value, self.message, self.line))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpecError) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


class SpecErrors(SpecError):
    """Several SpecErrors found together, so the user fixes them in one pass.

    Subclasses SpecError so `except SpecError` catches both; `errors` holds each one
    and str() lists them one per line. file/key_path/value/message are the first's.
    """

    def __init__(self, errors: Iterable[SpecError]) -> None:
        self.errors: list[SpecError] = _unique(errors)
        if not self.errors:
            raise ValueError("SpecErrors needs at least one error")
        first = self.errors[0]
        super().__init__(first.file, first.key_path, first.value, first.message, first.line)

    def __str__(self) -> str:
        return "\n".join(SpecError.__str__(e) for e in self.errors)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (type(self), (self.errors,))

    def lines(self) -> list[str]:
        """One message per error, in the order found."""
        return [SpecError.__str__(e) for e in self.errors]


def _unique(errors: Iterable[SpecError]) -> list[SpecError]:
    """Drop exact repeats (the same mistake seen once per budget) but keep order."""
    seen: set[str] = set()
    kept: list[SpecError] = []
    for err in errors:
        parts = err.errors if isinstance(err, SpecErrors) else [err]
        for part in parts:
            text = SpecError.__str__(part)
            if text not in seen:
                seen.add(text)
                kept.append(part)
    return kept
