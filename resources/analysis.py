"""Text analysis for the keyword index: one analyzer for documents and queries alike.

Lowercase, strip diacritics, split on non-word characters, stem with Snowball. Running the same
code on both sides keeps index terms and query terms identical, which typo correction relies on.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import Stemmer

_WORD = re.compile(r"\w+", re.UNICODE)

# Function words dropped from queries only: they match nearly every chunk, carry almost no
# BM25 weight and make a disjunctive query touch the whole index.
QUERY_STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    """.split()
)


_COMBINING = re.compile(r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")


def fold(text: str) -> str:
    """Lowercase and strip diacritics (é -> e); other scripts are kept as they are."""
    lowered = text.lower()
    if lowered.isascii():
        return lowered
    return _COMBINING.sub("", unicodedata.normalize("NFKD", lowered))


class Analyzer:
    def __init__(self, language: str = "english") -> None:
        self.language = language
        self._stemmer = Stemmer.Stemmer(language)

    def words(self, text: str) -> list[str]:
        return _WORD.findall(fold(text))

    def terms(self, text: str) -> list[str]:
        """Index terms of ``text`` in order (stems of every word)."""
        return self._stemmer.stemWords(self.words(text))

    def stem(self, word: str) -> str:
        return self._stemmer.stemWord(word)

    def query_terms(self, text: str) -> list[str]:
        """Distinct stems of the query's content words (all words if it has only stopwords)."""
        words = self.words(text)
        content = [w for w in words if w not in QUERY_STOPWORDS] or words
        seen: dict[str, None] = {}
        for term in self._stemmer.stemWords(content):
            seen.setdefault(term, None)
        return list(seen)


@lru_cache(maxsize=8)
def get_analyzer(language: str = "english") -> Analyzer:
    return Analyzer(language)
