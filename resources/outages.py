"""A store server that does not answer, named: what every door turns into one clear message.

Each server store's module says which of its client library's errors mean "the server is not
there" (refused, reset, timed out, answered 5xx) through an ``unavailable(err)`` function;
``classify`` walks an error's causes and asks the modules already imported (an error cannot
come from a library nobody loaded, and the check imports nothing). Such an error is not the
document's fault: the pipeline leaves the entry for the next run instead of failing it, the
Data API answers 503 with ``Retry-After``, the CLI prints the store's name.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

# kind, what people call it, module, and that module's classifier (by name: imported lazily)
_STORES = (
    ("catalog", "catalog", "resources.catalog"),
    ("objects", "object store", "resources.s3objects"),
    ("vectors", "vector index", "resources.qdrant"),
    ("keywords", "keyword index", "resources.meili"),
)
STORE_NAMES = {kind: name for kind, name, _ in _STORES}
RETRY_AFTER_SECONDS = 10


class StoreUnavailable(RuntimeError):
    """The server of one store kind did not answer; the operation may succeed later."""

    def __init__(self, store: str, detail: str, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        self.store = store
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(f"the {STORE_NAMES.get(store, store)} is unavailable: {detail}")

    @property
    def public(self) -> str:
        """The message without the server's answer (addresses, paths): for tenants."""
        return f"the {STORE_NAMES.get(self.store, self.store)} is unavailable; retry later"


def causes(err: BaseException) -> Iterator[BaseException]:
    """The error, then what caused it, and so on (each once)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(err: BaseException) -> StoreUnavailable | None:
    """The store outage behind ``err``, or None when it is something else."""
    for cause in causes(err):
        if isinstance(cause, StoreUnavailable):
            return cause
        for kind, _, module_name in _STORES:
            module = sys.modules.get(module_name)
            if module is None:
                continue
            detail = module.unavailable(cause)
            if detail:
                return StoreUnavailable(kind, _socket_reason(err) or _short(detail))
    return None


def _socket_reason(err: BaseException) -> str | None:
    """'Connection refused', 'timed out': what the socket said, under the clients' wrappers."""
    for cause in causes(err):
        if isinstance(cause, OSError) and (cause.strerror or isinstance(cause, TimeoutError)):
            return (cause.strerror or "timed out").lower()
    return None


def reraise_outage(err: BaseException) -> None:
    """Raise the outage behind ``err``, if there is one (before blaming a document for it)."""
    outage = classify(err)
    if outage is not None:
        raise outage from err


def _short(detail: str, limit: int = 300) -> str:
    """The first line of a server's message, bounded."""
    return (detail.strip().splitlines() or [""])[0][:limit]
