"""Parsers of the raw Debian files (Ding lines, DDTP Translation blocks)."""

from spec_cascade.data import parsers

# Lines in the real Ding format (see offline-data.md), written for the test.
DING_LINES = [
    "# Version :: devel 2023-01-30",
    "# License :: GPL Version 2 or later",
    # Entry + two aligned example sentences; annotations everywhere.
    "Aal {m} [zool.] | Der Aal ist glatt. | Was zum Kuckuck (Teufel) soll das bedeuten? :: "
    "eel | The eel is slippery. | What the heck (hell) does that mean? /WTHDTM/",
    # Alternatives after "; ": the first one on each side is kept.
    "Das ist mir egal.; Ist mir doch egal. :: I don't care about it.; Couldn't care less.",
    # Sub-entry counts differ (2 vs 1): alignment unknown, nothing kept.
    "Haus {n} | Das Haus ist sehr alt. :: house",
    # Too short (3 words) on the English side.
    "Komm sofort hierher zu mir! :: Come here now!",
    # Template with a placeholder "…": not a sentence.
    "Der Tag, an dem …, ist nahe. :: The day when … is near.",
    # No separator.
    "nur deutsch ohne Übersetzung.",
]


def test_ding_sentence_pairs_are_extracted_aligned_and_cleaned():
  pairs = parsers.parse_ding(DING_LINES)
  assert pairs == [
      ("The eel is slippery.", "Der Aal ist glatt."),
      ("What the heck does that mean?", "Was zum Kuckuck soll das bedeuten?"),
      ("I don't care about it.", "Das ist mir egal."),
  ]


def test_ding_annotation_stripping_handles_nesting_and_punctuation():
  assert parsers.strip_ding_annotations("etw. tun {vt} (für jdn. (sehr) gern) .") == "etw. tun."
  assert parsers.strip_ding_annotations("a <b> [c] {d} e") == "a e"


def test_ding_min_words_is_respected():
  line = "Komm sofort hierher zu mir! :: Come here right now!"
  assert parsers.parse_ding_line(line, min_words=4) == [
      ("Come here right now!", "Komm sofort hierher zu mir!")]
  assert parsers.parse_ding_line(line, min_words=5) == []


def test_ding_version_header():
  assert parsers.ding_version(DING_LINES) == "devel 2023-01-30"
  assert parsers.ding_version(["Aal {m} :: eel"]) is None


TRANSLATION_EN = """\
Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-en: real-time strategy game of ancient warfare
 0 A.D. is a free, open-source, cross-platform
 real-time strategy game of ancient warfare.
 .
 This package contains the game.

Package: 0ad-copy
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-en: a second package sharing the description
 ignored because the md5 was seen already

Package: lib-two
Description-md5: 00000000000000000000000000000002
Description-en: library with two paragraphs
 First paragraph
    with a verbatim line.
 .
 Second paragraph.
 .
 Third paragraph.

Package: no-md5
Description-en: block without md5 is skipped
 text
"""

TRANSLATION_DE = """\
Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-de: Echtzeit-Strategiespiel über antike Kriegsführung
 0 A.D. ist ein freies, quelloffenes, plattformübergreifendes
 Echtzeit-Strategiespiel über antike Kriegsführung.
 .
 Dieses Paket enthält das Spiel.

Package: lib-two
Description-md5: 00000000000000000000000000000002
Description-de: Bibliothek
 Nur ein Absatz.
"""


def test_translation_blocks_are_parsed_by_md5():
  english = parsers.parse_translation(TRANSLATION_EN.splitlines(True), "en")
  assert set(english) == {"d943033bedada21853d2ae54a2578a7b",
                          "00000000000000000000000000000002"}
  game = english["d943033bedada21853d2ae54a2578a7b"]
  assert game.package == "0ad"
  assert game.synopsis == "real-time strategy game of ancient warfare"
  assert game.paragraphs == (
      "0 A.D. is a free, open-source, cross-platform real-time strategy game of "
      "ancient warfare.", "This package contains the game.")
  lib = english["00000000000000000000000000000002"]
  assert lib.paragraphs == ("First paragraph with a verbatim line.",
                            "Second paragraph.", "Third paragraph.")
  assert lib.long_text == ("First paragraph with a verbatim line. Second paragraph. "
                           "Third paragraph.")


def test_paragraphs_pair_only_when_counts_match():
  english = parsers.parse_translation(TRANSLATION_EN.splitlines(True), "en")
  german = parsers.parse_translation(TRANSLATION_DE.splitlines(True), "de")
  assert parsers.pair_paragraphs(english, german) == [
      # lib-two (md5 0…2) has 3 English but 1 German paragraph: skipped.
      ("0 A.D. is a free, open-source, cross-platform real-time strategy game of "
       "ancient warfare.",
       "0 A.D. ist ein freies, quelloffenes, plattformübergreifendes "
       "Echtzeit-Strategiespiel über antike Kriegsführung."),
      ("This package contains the game.", "Dieses Paket enthält das Spiel."),
  ]


def test_wrong_language_field_yields_nothing():
  assert parsers.parse_translation(TRANSLATION_EN.splitlines(True), "de") == {}
