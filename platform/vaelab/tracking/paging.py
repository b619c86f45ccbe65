"""MLflow's paged searches, read to the end: the one loop every `search_*` call goes through.

MLflow caps a page (1,000 runs on SQLite, 50,000 at most) and returns a `token` for the
next one; a caller that asks once silently loses everything past the first page.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence, TypeVar

T = TypeVar("T")
PAGE_SIZE = 1000


def pages(fetch: Callable[[Optional[str]], Sequence[T]]) -> Iterator[Sequence[T]]:
    """Each page of a paged MLflow search: `fetch(token)` returns a PagedList (None: the first)."""
    token: Optional[str] = None
    while True:
        page = fetch(token)
        yield page
        token = getattr(page, "token", None)
        if not token:
            return


def all_pages(fetch: Callable[[Optional[str]], Sequence[T]]) -> list[T]:
    """Every item of a paged MLflow search, in the order the pages came."""
    return [item for page in pages(fetch) for item in page]
