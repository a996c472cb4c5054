"""Where a tenant's objects live in its object store. Keys are made here, never from user input."""

import re

INBOX = "inbox/"
# Inbox files the pipeline refused (too large, say): kept, with the reason on their entry,
# until the user deletes that entry. Nothing of a user's is deleted unless stored.
REJECTED = "rejected/"


def rejected_key(inbox_key: str) -> str:
    """Where a refused inbox file is kept (its path under the inbox, moved)."""
    return REJECTED + inbox_key[len(INBOX) :]


def raw_key(entry_id: str) -> str:
    """The original file of an entry."""
    return f"raw/{entry_id}"


def text_key(entry_id: str) -> str:
    """Page texts (``ocr_output``)."""
    return f"derived/text/{entry_id}.json"


def chunks_key(entry_id: str) -> str:
    return f"derived/chunks/{entry_id}.json"


def embeddings_key(entry_id: str) -> str:
    return f"derived/embeddings/{entry_id}.npy"


def figures_prefix(entry_id: str) -> str:
    """Figures an OCR service extracted from the entry (``derived/figures/<entry>/<id>``)."""
    return f"derived/figures/{entry_id}/"


def figure_key(entry_id: str, figure_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", figure_id).lstrip(".") or "figure"
    return figures_prefix(entry_id) + safe[:200]


def derived_keys(entry_id: str) -> tuple[str, ...]:
    """Everything the pipeline derives from an entry."""
    return (text_key(entry_id), chunks_key(entry_id), embeddings_key(entry_id))


STORED_PREFIXES = ("raw/", "derived/")
_ENTRY_KEY = re.compile(r"^(?:raw/|derived/(?:text|chunks|embeddings|figures)/)([0-9a-f-]{36})")


def entry_of(key: str) -> str | None:
    """The entry an original or a derived object belongs to (None: not an entry's object)."""
    found = _ENTRY_KEY.match(key)
    return found.group(1) if found else None
