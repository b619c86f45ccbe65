"""What the top of a report says: the study, its notes, budget, git SHA and trial counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vaelab.report.collect import StudyData

STATUS_ORDER = ("finished", "diverged", "failed", "stopped", "running")


@dataclass(frozen=True)
class Summary:
    study: str
    notes: str
    budget: str | None
    git_sha: str | None
    spec_hash: str | None
    versions: str | None
    parent_run_id: str | None
    study_status: str | None
    status_counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)

    @property
    def n_trials(self) -> int:
        return sum(self.status_counts.values())

    def status_line(self) -> str:
        """'16 trials: 14 finished, 1 diverged, 1 failed'."""
        parts = [f"{n} {status}" for status, n in self.status_counts.items() if n]
        noun = "trial" if self.n_trials == 1 else "trials"
        return f"{self.n_trials} {noun}" + (f": {', '.join(parts)}" if parts else "")

    def facts(self) -> list[tuple[str, str]]:
        """(name, value) pairs shown under the title; absent ones read 'unknown'."""
        return [
            ("budget", self.budget or "unknown"),
            ("git SHA", self.git_sha or "unknown"),
            ("spec hash", self.spec_hash or "unknown"),
            ("versions", self.versions or "unknown"),
            ("MLflow study run", f"{self.parent_run_id or 'none'} ({self.study_status or 'status unknown'})"),
            ("trials", self.status_line()),
        ]


def summarize(data: StudyData) -> Summary:
    tags = data.parent_tags
    counts = Counter(data.trials_df["status"]) if len(data.trials_df) else Counter()
    ordered = {s: counts.get(s, 0) for s in STATUS_ORDER}
    ordered |= {s: n for s, n in sorted(counts.items()) if s not in ordered}
    return Summary(
        study=data.record.study,
        notes=data.spec.notes.strip(),
        budget=tags.get("vaelab.budget") or _str_or_none(data.study_yaml.get("budget")),
        git_sha=tags.get("vaelab.git_sha"),
        spec_hash=tags.get("vaelab.spec_hash"),
        versions=tags.get("vaelab.versions"),
        parent_run_id=data.record.parent.run_id if data.record.parent else None,
        study_status=tags.get("vaelab.status"),
        status_counts=ordered,
        warnings=list(data.warnings),
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
