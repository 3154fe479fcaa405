"""Offline corpora: splits, filters, dedup, cache handling, manual raw files.

Everything runs on synthetic fixtures (`spec_cascade.data.fixtures`); the real
corpora are built only by the slow test at the end.
"""

import gzip
import hashlib
import json
import os
import random
import shutil
import time

import gin
import pytest

from spec_cascade.data import fixtures
from spec_cascade.data import offline
from spec_cascade.data import parsers
from spec_cascade.data import raw as raw_lib
from spec_cascade.data import vocab as vocab_lib

SMALL_PIECES = 200


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
  monkeypatch.delenv(offline.ENV_CACHE, raising=False)
  monkeypatch.delenv(offline.ENV_RAW, raising=False)
  with gin.unlock_config():
    gin.bind_parameter("offline_settings.vocab_pieces", SMALL_PIECES)
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
  return fixtures.write_raw_fixture(tmp_path_factory.mktemp("raw"))


def _build(cache, raw, monkeypatch, force=False):
  monkeypatch.setenv(offline.ENV_RAW, str(raw))
  return offline.build_corpora(cache, force=force)


# ---------------------------------------------------------------- splits


def test_split_is_a_hash_bucket_of_the_key():
  for key in ["The eel is slippery.", "Der Aal", "x" * 1000, "äöü"]:
    bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 1000
    expected = "validation" if bucket < 30 else "test" if bucket < 60 else "train"
    assert offline.split_of(key) == expected


def test_split_fractions_are_about_three_percent_each():
  rng = random.Random(0)
  keys = [f"{rng.random()} {i}" for i in range(40000)]
  counts = {s: 0 for s in offline.SPLITS}
  for key in keys:
    counts[offline.split_of(key)] += 1
  # Binomial(40000, 0.03): sd ≈ 34, so ±200 is ~6 sd.
  assert abs(counts["validation"] - 1200) < 200
  assert abs(counts["test"] - 1200) < 200


def _descriptions(entries, lang):
  return {
      md5: parsers.Description(package=f"p{i}", md5=md5, synopsis=synopsis,
                               paragraphs=tuple(paragraphs))
      for i, (md5, synopsis, paragraphs) in enumerate(entries)}


def _words(n, stem):
  return " ".join(f"{stem}{i}" for i in range(n))


def test_build_examples_filters_dedupes_and_prefixes():
  ding = [("One two three four.", "Eins zwei drei vier."),
          ("One two three four.", "Alpha zwei drei vier."),  # duplicate source
          ("Same on both sides.", "Same on both sides."),     # untranslated
          ("Five six seven eight.", "Fünf sechs sieben acht.")]
  long_para = _words(40, "w")
  english = _descriptions([
      ("m1", "a tool", [long_para, "Second paragraph here."]),
      ("m2", "too short", ["Only a few words here."]),
      ("m3", "too long", [_words(201, "v")]),
  ], "en")
  german = _descriptions([
      ("m1", "ein Werkzeug", [_words(40, "x"), "Zweiter Absatz hier."]),
  ], "de")
  examples, stats = offline.build_examples(ding, english, german)

  ende = [row for split in offline.SPLITS for row in examples["debian_ende"][split]]
  by_source = {row["inputs"]: row["targets"] for row in ende}
  prefix = "translate English to German: "
  assert by_source == {
      prefix + "One two three four.": "Alpha zwei drei vier.",  # smallest target
      prefix + "Five six seven eight.": "Fünf sechs sieben acht.",
      prefix + long_para: _words(40, "x"),
      prefix + "Second paragraph here.": "Zweiter Absatz hier.",
  }
  assert stats["debian_ende"]["dropped"]["untranslated"] == 1
  assert stats["debian_ende"]["duplicates_removed"] == 1

  summ = [row for split in offline.SPLITS for row in examples["debian_summarize"][split]]
  assert [(r["inputs"], r["targets"]) for r in summ] == [
      ("summarize: " + long_para + " Second paragraph here.", "a tool")]
  assert stats["debian_summarize"]["dropped"] == {
      "no_synopsis": 0, "too_short": 1, "too_long": 1}
  assert len({r["id"] for r in ende + summ}) == len(ende) + len(summ)


def test_build_examples_is_independent_of_input_order(raw_dir):
  ding = parsers.parse_ding((raw_dir / "de-en").read_text().splitlines())
  english = parsers.parse_translation((raw_dir / "Translation-en").open(), "en")
  german = parsers.parse_translation((raw_dir / "Translation-de").open(), "de")
  reference, _ = offline.build_examples(ding, english, german)
  rng = random.Random(1)
  rng.shuffle(ding)
  shuffled_en = dict(rng.sample(sorted(english.items()), len(english)))
  shuffled_de = dict(rng.sample(sorted(german.items()), len(german)))
  assert offline.build_examples(ding, shuffled_en, shuffled_de)[0] == reference
  # Adding examples never moves existing ones between splits.
  more = ding + [(f"Extra sentence number {i} here.", f"Extra Satz Nummer {i} hier.")
                 for i in range(50)]
  grown, _ = offline.build_examples(more, english, german)
  for split in offline.SPLITS:
    old_ids = {r["id"] for r in reference["debian_ende"][split]}
    assert old_ids <= {r["id"] for r in grown["debian_ende"][split]}


def test_summaries_sharing_a_first_paragraph_share_a_split():
  first = _words(35, "shared")
  english = _descriptions(
      [(f"m{i}", f"variant {i}", [first, f"Variant {i} specific text."]) for i in range(40)],
      "en")
  examples, _ = offline.build_examples([], english, {})
  used = [s for s in offline.SPLITS if examples["debian_summarize"][s]]
  assert used == [offline.split_of(first)]
  assert sum(len(examples["debian_summarize"][s]) for s in offline.SPLITS) == 40


# ---------------------------------------------------------------- build + cache


def test_build_from_manual_files(tmp_path, raw_dir, monkeypatch):
  directory = _build(tmp_path, raw_dir, monkeypatch)
  assert directory == tmp_path / offline.CORPUS_DIRNAME
  manifest = json.loads((directory / offline.MANIFEST).read_text())
  assert manifest["sources"]["mode"] == "manual"
  assert manifest["sources"]["ding_header_version"] == "fixture"
  assert manifest["filters"]["summarize_min_words"] == 30
  for task, prefix in offline.PREFIXES.items():
    seen = {}
    for split in offline.SPLITS:
      rows = offline.load_split(task, split, tmp_path)
      assert len(rows) == manifest["tasks"][task]["splits"][split]["count"]
      for row in rows:
        assert set(row) == {"inputs", "targets", "id"}
        assert row["inputs"].startswith(prefix) and row["targets"]
        assert row["inputs"] not in seen, "a source in two splits or twice"
        seen[row["inputs"]] = split
    assert len(seen) >= 100
  # The fixture's Ding file has 400 sentence lines; 2 junk lines are rejected.
  assert manifest["tasks"]["debian_ende"]["candidates"]["ding_sentence_pairs"] == 400
  entry = manifest["vocabs"][str(SMALL_PIECES)]
  assert entry["sha256"] == raw_lib.sha256_file(directory / entry["file"])
  assert entry["vocab_size"] == SMALL_PIECES + 100


def test_build_is_idempotent_and_deterministic(tmp_path, raw_dir, monkeypatch):
  first = _build(tmp_path / "a", raw_dir, monkeypatch)
  stamp = (first / offline.MANIFEST).stat().st_mtime_ns
  assert _build(tmp_path / "a", raw_dir, monkeypatch) == first
  assert (first / offline.MANIFEST).stat().st_mtime_ns == stamp  # not rebuilt
  second = _build(tmp_path / "b", raw_dir, monkeypatch)
  m1 = json.loads((first / offline.MANIFEST).read_text())
  m2 = json.loads((second / offline.MANIFEST).read_text())
  for m in (m1, m2):
    m.pop("build_seconds")
    m["sources"].pop("raw_dir")
    for info in m["sources"]["files"].values():
      info.pop("from")
  assert m1 == m2  # same split files and vocabulary hashes


@pytest.mark.parametrize("damage", ["edit_split", "drop_manifest", "bad_json", "drop_vocab"])
def test_corrupt_or_partial_cache_is_rebuilt(tmp_path, raw_dir, monkeypatch, damage):
  directory = _build(tmp_path, raw_dir, monkeypatch)
  manifest = json.loads((directory / offline.MANIFEST).read_text())
  split_file = directory / "debian_ende" / "test.jsonl"
  good = split_file.read_bytes()
  if damage == "edit_split":
    split_file.write_bytes(good.replace(b"translate", b"TRANSLATE", 1))
  elif damage == "drop_manifest":
    (directory / offline.MANIFEST).unlink()
  elif damage == "bad_json":
    (directory / offline.MANIFEST).write_text("{ truncated")
  else:
    (directory / manifest["vocabs"][str(SMALL_PIECES)]["file"]).unlink()
  time.sleep(0.01)  # distinct mtime for the verification cache
  rebuilt = offline.build_corpora(tmp_path)
  assert split_file.read_bytes() == good
  assert offline.verify(rebuilt)["tasks"] == manifest["tasks"]


def test_unwritable_cache_dir_is_reported(tmp_path, raw_dir, monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  monkeypatch.setenv(offline.ENV_RAW, str(raw_dir))
  with pytest.raises(offline.CacheDirError, match="SPEC_CASCADE_CACHE"):
    offline.build_corpora(blocker / "cache")


def test_cache_dir_resolution_order(tmp_path, monkeypatch):
  home_default = offline.DEFAULT_CACHE.expanduser().absolute()
  assert offline.resolve_cache_dir() == home_default
  monkeypatch.setenv(offline.ENV_CACHE, str(tmp_path / "env"))
  assert offline.resolve_cache_dir() == tmp_path / "env"
  with gin.unlock_config():
    gin.bind_parameter("offline_settings.cache_dir", str(tmp_path / "gin"))
  assert offline.resolve_cache_dir() == tmp_path / "gin"
  assert offline.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_missing_apt_says_how_to_provide_files(tmp_path, monkeypatch):
  monkeypatch.setattr(raw_lib.shutil, "which", lambda tool: None)
  with pytest.raises(raw_lib.RawDataError) as info:
    offline.build_corpora(tmp_path)
  message = str(info.value)
  assert "apt-get" in message and "SPEC_CASCADE_RAW_DIR" in message
  for name in ("de-en", "Translation-en", "Translation-de"):
    assert name in message
  assert not (tmp_path / offline.CORPUS_DIRNAME).exists()


def test_manual_dir_missing_a_file_is_named(tmp_path, raw_dir, monkeypatch):
  partial = tmp_path / "partial"
  shutil.copytree(raw_dir, partial)
  (partial / "Translation-de").unlink()
  monkeypatch.setenv(offline.ENV_RAW, str(partial))
  with pytest.raises(raw_lib.RawDataError, match="lacks Translation-de"):
    offline.build_corpora(tmp_path / "cache")


def test_manual_dir_accepts_compressed_files(tmp_path, raw_dir, monkeypatch):
  packed = tmp_path / "packed"
  packed.mkdir()
  for name in raw_lib.RAW_FILES:
    with gzip.open(packed / (name + ".gz"), "wb") as f:
      f.write((raw_dir / name).read_bytes())
  plain = json.loads((_build(tmp_path / "plain", raw_dir, monkeypatch)
                      / offline.MANIFEST).read_text())
  gz = json.loads((_build(tmp_path / "gz", packed, monkeypatch)
                   / offline.MANIFEST).read_text())
  assert gz["tasks"] == plain["tasks"]


def test_load_split_rejects_unknown_names(tmp_path):
  with pytest.raises(ValueError, match="debian_ende"):
    offline.load_split("wmt", "train", tmp_path)
  with pytest.raises(ValueError, match="validation"):
    offline.load_split("debian_ende", "dev", tmp_path)


def test_vocab_with_other_piece_count_is_added_to_manifest(tmp_path, raw_dir, monkeypatch):
  directory = _build(tmp_path, raw_dir, monkeypatch)
  path = vocab_lib.get_vocab_path(tmp_path, num_pieces=150)
  manifest = offline.verify(directory)
  assert manifest["vocabs"]["150"]["sha256"] == raw_lib.sha256_file(path)
  assert str(SMALL_PIECES) in manifest["vocabs"]
  assert vocab_lib.SentencePieceTokenizer(path).vocab_size == 250
  assert vocab_lib.get_vocab_path(tmp_path) == directory / vocab_lib.vocab_filename(SMALL_PIECES)


@pytest.mark.slow
def test_real_corpora_build(tmp_path_factory):
  """Builds the real corpora through apt (network to Debian's archive)."""
  cache = os.environ.get("SPEC_CASCADE_TEST_CACHE") or tmp_path_factory.mktemp("real")
  with gin.unlock_config():
    gin.bind_parameter("offline_settings.vocab_pieces", offline.DEFAULT_VOCAB_PIECES)
  started = time.time()
  directory = offline.build_corpora(cache)
  manifest = offline.verify(directory)
  counts = {t: manifest["tasks"][t]["counts"] for t in offline.TASKS}
  # Bookworm: ≈18.6k Ding sentences + ≈19.1k DDTP paragraphs; ≈44k summaries.
  assert 30000 < sum(counts["debian_ende"].values()) < 50000
  assert 35000 < sum(counts["debian_summarize"].values()) < 55000
  for task in offline.TASKS:
    for split in ("validation", "test"):
      assert counts[task][split] >= 500
  assert manifest["sources"]["ding"]["package"] == "trans-de-en"
  assert manifest["vocabs"]["4000"]["vocab_size"] == 4100
  tok = vocab_lib.SentencePieceTokenizer(directory / manifest["vocabs"]["4000"]["file"])
  targets = [r["targets"] for r in offline.load_split("debian_ende", "validation", cache)]
  exact = sum(tok.decode(tok.encode(t)) == t for t in targets) / len(targets)
  assert exact > 0.95  # the rest differ by NFKC normalisation or rare characters
  print(f"real build: {time.time() - started:.1f} s, counts {counts}")
