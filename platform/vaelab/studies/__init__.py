"""Studies: YAML search spaces and studies -> validated trial configs.

Importing this package never imports ray (the Tune runner is `studies.runner`), so
the CLI can validate and list studies without starting anything.
"""

from vaelab.errors import SpecError, SpecErrors, VaelabError
from vaelab.studies.expand import (
    TrialSpec,
    expand_trials,
    group_cohorts,
    load_search_space,
    load_study,
    missing_init_from,
    resolved_dict,
    resolved_yaml,
    spec_hash,
    trial_from_point,
    tune_search_space,
    validate_file,
)
from vaelab.studies.schema import SearchSpaceSpec, Study

__all__ = [
    "SearchSpaceSpec",
    "SpecError",
    "SpecErrors",
    "Study",
    "TrialSpec",
    "VaelabError",
    "expand_trials",
    "group_cohorts",
    "load_search_space",
    "load_study",
    "missing_init_from",
    "resolved_dict",
    "resolved_yaml",
    "spec_hash",
    "trial_from_point",
    "tune_search_space",
    "validate_file",
]
