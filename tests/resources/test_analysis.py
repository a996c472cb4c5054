"""Language analysis: folding, CJK bigrams, per-language stemmers and stopwords, detection."""

from pathlib import Path

from resources.analysis import cjk_bigrams, detect_language, fold, get_analyzer
from resources.keywords import KeywordDoc, SqliteKeywordIndex


def test_fold_keeps_voiced_kana_and_strips_latin_marks() -> None:
    assert fold("シグナル") == "シグナル"  # NFKD alone would split グ into ク + ゙
    assert fold("Crème Brûlée") == "creme brulee"
    assert fold("ｶﾞｰﾄﾞ ＡＢＣ") == "ガード abc"  # half-width kana, full-width letters
    assert fold("Йод") == "йод"  # a Cyrillic letter's mark is part of it


def test_cjk_runs_become_bigrams_in_every_language() -> None:
    assert cjk_bigrams("文件系统") == ["文件", "件系", "系统"] and cjk_bigrams("文") == ["文"]
    for lang in ("en", "de", "zh", "ja"):
        assert get_analyzer(lang).terms("grep 文件系统") == ["grep", "文件", "件系", "系统"]


def test_each_language_has_its_stemmer_and_stopwords() -> None:
    assert get_analyzer("de").query_terms("die Dateien werden gelöscht") == ["datei", "geloscht"]
    assert get_analyzer("fr").query_terms("le fichier est supprimé") == ["fichi", "supprim"]
    assert get_analyzer("english").query_terms("the layers of a wing") == ["layer", "wing"]
    assert get_analyzer("xx").language == "english"


def test_detect_language() -> None:
    assert detect_language("Die Datei wird nicht gelöscht, wenn sie geöffnet ist.") == "de"
    assert detect_language("Le fichier n'est pas supprimé tant qu'il est ouvert.") == "fr"
    assert detect_language("The file is not removed while it is open.") == "en"
    assert detect_language("grep はファイルの中でパターンを探す") == "ja"
    assert detect_language("grep 在文件中搜索模式") == "zh"
    assert detect_language("파일에서 패턴을 찾습니다") == "ko"
    assert detect_language("12345 --", default="fr") == "fr"
    assert detect_language("Datei", among={"de"}) == "de"


def test_keyword_index_analyzes_each_chunk_in_its_language(tmp_path: Path) -> None:
    idx = SqliteKeywordIndex(tmp_path / "k.db")
    texts = {
        "de": "Die Prüfsummen der komprimierten Dateien werden beim Entpacken überprüft.",
        "en": "Checksums of compressed files are verified while decompressing.",
        "ja": "圧縮されたファイルのチェックサムは展開時に検証されます。",
    }
    for lang, text in texts.items():
        idx.replace_entry(lang, [KeywordDoc(f"{lang}-0", lang, "d", 0, 1, 0, 9, text, lang)])
    assert idx.search("komprimierte Datei", 3)[0].entry_id == "de"  # German stems
    assert idx.search("ファイルのチェック", 3)[0].entry_id == "ja"  # a run's middle, bigrams
    assert idx.search("verifying checksum", 3)[0].entry_id == "en"
    assert idx.get_docs(["ja-0"])["ja-0"].language == "ja"
