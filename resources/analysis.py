"""Text analysis for the keyword index: one analyzer per language, for documents and queries.

Lowercase, strip Latin diacritics, split into words, stem with the language's Snowball stemmer.
Chinese, Japanese and Korean have no spaces between words: runs of Han, kana and Hangul become
overlapping character bigrams (a lone character stays a unigram), as Lucene's CJK analyzer
does, so a word or phrase inside a longer run is found without a dictionary; that holds in
every analyzer, whatever the text's language. Running the same code on both sides keeps index
terms and query terms identical, which typo correction relies on.

``detect_language`` names a text's language (ISO 639-1) among those analyzed here: script
rules for CJK, py3langid (loaded once per process, on first use) for the rest.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Collection
from functools import lru_cache
from typing import Any

import Stemmer

from resources.stopwords import STOPWORDS

# Snowball stemmers (PyStemmer) by ISO 639-1 code: the languages keyword search analyzes.
SNOWBALL = {
    "ar": "arabic", "hy": "armenian", "eu": "basque", "ca": "catalan", "cs": "czech",
    "da": "danish", "nl": "dutch", "en": "english", "eo": "esperanto", "et": "estonian",
    "fi": "finnish", "fr": "french", "de": "german", "el": "greek", "hi": "hindi",
    "hu": "hungarian", "id": "indonesian", "ga": "irish", "it": "italian", "lt": "lithuanian",
    "ne": "nepali", "no": "norwegian", "fa": "persian", "pl": "polish", "pt": "portuguese",
    "ro": "romanian", "ru": "russian", "sr": "serbian", "es": "spanish", "sv": "swedish",
    "ta": "tamil", "tr": "turkish",
}  # fmt: skip
CJK_LANGUAGES = ("zh", "ja", "ko")
LANGUAGES = frozenset(SNOWBALL) | frozenset(CJK_LANGUAGES)
DEFAULT_LANGUAGE = "en"
# Changes when the terms of a text change: an index analyzed by older code is analyzed again.
ANALYSIS_VERSION = "analysis=2:cjk-bigrams"

# Function words dropped from English queries only: they match nearly every chunk, carry
# almost no BM25 weight and make a disjunctive query touch the whole index. Other languages
# use Snowball's lists (``resources.stopwords``).
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

_COMBINING = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
# A combining mark on a Latin letter (é -> e); marks of other scripts (kana's dakuten, Cyrillic
# й) are part of the letter and stay.
_LATIN_MARKS = re.compile(rf"(?<=[a-z\u00c0-\u024f\u1e00-\u1eff])[{_COMBINING}]+")
# Han (with 々 and 〆), hiragana, katakana (with ー), Hangul.
_CJK = (
    "\u3005\u3006\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
)
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W{_CJK}]+")
_IS_CJK = re.compile(rf"[{_CJK}]")
_KANA = re.compile(r"[\u3040-\u309f\u30a0-\u30fa\u30fd-\u30ff\u31f0-\u31ff]")
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_LETTER = re.compile(r"[^\W\d_]")
_PAGE_LETTERS = 200  # below this a page takes its document's language


def fold(text: str) -> str:
    """Lowercase, strip Latin diacritics (é -> e) and unify compatibility forms (full-width
    letters, half-width kana); recomposed, so Japanese voiced kana stay one character."""
    lowered = text.lower()
    if lowered.isascii():
        return lowered
    stripped = _LATIN_MARKS.sub("", unicodedata.normalize("NFKD", lowered))
    return unicodedata.normalize("NFC", stripped)


def is_cjk(text: str) -> bool:
    return bool(_IS_CJK.search(text))


def cjk_bigrams(run: str) -> list[str]:
    """Overlapping bigrams of a run of CJK characters; a single character stays itself."""
    if len(run) < 2:
        return [run]
    return [run[i : i + 2] for i in range(len(run) - 1)]


def _snowball_name(language: str) -> str | None:
    if language in SNOWBALL:
        return SNOWBALL[language]
    return language if language in SNOWBALL.values() else None


def language_code(language: str | None) -> str:
    """An ISO 639-1 code for ``language`` (a code or a Snowball name); the default if unknown."""
    if not language:
        return DEFAULT_LANGUAGE
    language = language.lower()
    if language in LANGUAGES:
        return language
    by_name = {name: code for code, name in SNOWBALL.items()}
    return by_name.get(language, DEFAULT_LANGUAGE)


class Analyzer:
    """Terms of one language: its Snowball stemmer and stopwords, CJK runs as bigrams."""

    def __init__(self, language: str = "english") -> None:
        self.code = language_code(language)
        name = _snowball_name(self.code)
        self.language = name or self.code
        self._stemmer = Stemmer.Stemmer(name) if name else None
        if self.code == "en":
            self.stopwords = QUERY_STOPWORDS
        else:
            self.stopwords = frozenset(fold(w) for w in STOPWORDS.get(self.code, ()))

    def words(self, text: str) -> list[str]:
        """Words and CJK runs, folded, in order."""
        return _TOKEN.findall(fold(text))

    def stem(self, word: str) -> str:
        return self._stemmer.stemWord(word) if self._stemmer else word

    def _terms_of(self, words: list[str]) -> list[str]:
        out: list[str] = []
        latin: list[str] = []
        for word in words:
            if _IS_CJK.match(word):
                if latin:
                    out += self._stem_all(latin)
                    latin = []
                out += cjk_bigrams(word)
            else:
                latin.append(word)
        if latin:
            out += self._stem_all(latin)
        return out

    def _stem_all(self, words: list[str]) -> list[str]:
        return self._stemmer.stemWords(words) if self._stemmer else words

    def terms(self, text: str) -> list[str]:
        """Index terms of ``text`` in order (stems of every word, bigrams of CJK runs)."""
        return self._terms_of(self.words(text))

    def query_terms(self, text: str) -> list[str]:
        """Distinct terms of the query's content words (all words if it has only stopwords)."""
        words = self.words(text)
        content = [w for w in words if w not in self.stopwords] or words
        return list(dict.fromkeys(self._terms_of(content)))


@lru_cache(maxsize=64)
def get_analyzer(language: str | None = "english") -> Analyzer:
    """The analyzer of a language (ISO 639-1 code or Snowball name; unknown: English)."""
    return Analyzer(language_code(language))


# -- language detection ---------------------------------------------------------------------
_identifier: Any = None
_identifier_lock = threading.Lock()


def _langid() -> Any:
    """py3langid restricted to the languages analyzed here (loaded once: ~1 s)."""
    global _identifier
    if _identifier is None:
        with _identifier_lock:
            if _identifier is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                ident = LanguageIdentifier.from_model_file(MODEL_FILE)
                ident.set_languages(sorted(LANGUAGES))
                _identifier = ident
    return _identifier


def preload_language_model() -> threading.Thread:
    """Load the language identifier in a background thread (what waits on something else,
    such as a document being read in a child process, need not pay for it afterwards)."""
    thread = threading.Thread(target=_langid, name="langid-load", daemon=True)
    thread.start()
    return thread


def _script_language(text: str) -> str | None:
    """zh, ja or ko when CJK characters carry the text (a character is about a word, so they
    need not outnumber Latin letters); kana is Japanese only, Hangul Korean only."""
    cjk = len(_IS_CJK.findall(text))
    if not cjk:
        return None
    letters = len(_LETTER.findall(text))
    if cjk * 4 < letters - cjk:
        return None
    if _KANA.search(text):
        return "ja"
    if len(_HANGUL.findall(text)) * 2 >= cjk:
        return "ko"
    return "zh"


def page_languages(texts: list[str], pinned: str | None = None) -> list[str]:
    """The language of each page: the pinned one, else each page's own when it has enough
    text to tell, else the document's (a short page, a title, a table of numbers)."""
    if pinned:
        return [language_code(pinned)] * len(texts)
    document = detect_language(" ".join(t[:4000] for t in texts[:50]))
    return [
        detect_language(t, default=document)
        if len(_LETTER.findall(t[:4000])) >= _PAGE_LETTERS
        else document
        for t in texts
    ]


def dominant_language(languages: list[str], weights: list[int]) -> str | None:
    """The language of most of the text (by the given weights, e.g. characters per page)."""
    totals: dict[str, int] = {}
    for lang, weight in zip(languages, weights, strict=True):
        totals[lang] = totals.get(lang, 0) + weight
    return max(totals, key=lambda k: totals[k]) if totals else None


def detect_language(
    text: str, among: Collection[str] | None = None, default: str = DEFAULT_LANGUAGE
) -> str:
    """The language of ``text`` (ISO 639-1), among ``among`` when given (e.g. the languages a
    tenant's index holds: a short query is then not taken for a language nobody wrote in).
    ``default`` when the text has no letters."""
    sample = text[:20_000]
    if not _LETTER.search(sample):
        return default
    script = _script_language(sample)
    if script and (among is None or script in among):
        return script
    candidates = [c for c in (among or LANGUAGES) if c in LANGUAGES]
    if len(candidates) == 1:
        return candidates[0]
    if among is None:
        return str(_langid().classify(sample)[0])
    ranked = _langid().rank(sample)
    wanted = set(candidates)
    return next((str(lang) for lang, _ in ranked if lang in wanted), default)
