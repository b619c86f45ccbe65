"""What the top of a report says: the study, its notes, budget, git SHA and trial counts.

The reader's warnings are about this run's data (a study.yaml missing, an unreadable
artifact, a trial id logged twice). Notices about the rest of the MLflow store — other
study runs of the experiment and their trials, which the report leaves out by design —
concern whoever runs `vaelab report`, who sees every warning on the command line; they
are no part of the report a reader cites.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from vaelab.report.collect import StudyData
from vaelab.tracking.tags import TAG_BUDGET, TAG_GIT_SHA, TAG_SPEC_HASH, TAG_STATUS, TAG_VERSIONS

STATUS_ORDER = ("finished", "diverged", "failed", "stopped", "running")
# the store-level notices of tracking.read: about other study runs, not this one
_STORE_NOTICES = re.compile(r"trial run\(s\) of other study runs ignored|study runs in the experiment; the newest")


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
    warnings: list[str] = field(default_factory=list)  # every warning, for the command line

    @property
    def report_warnings(self) -> list[str]:
        """The warnings about this run's report, without the store-level notices."""
        return [w for w in self.warnings if not _STORE_NOTICES.search(w)]

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
        budget=tags.get(TAG_BUDGET) or _str_or_none(data.study_yaml.get("budget")),
        git_sha=tags.get(TAG_GIT_SHA),
        spec_hash=tags.get(TAG_SPEC_HASH),
        versions=tags.get(TAG_VERSIONS),
        parent_run_id=data.record.parent.run_id if data.record.parent else None,
        study_status=tags.get(TAG_STATUS),
        status_counts=ordered,
        warnings=list(data.warnings),
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
