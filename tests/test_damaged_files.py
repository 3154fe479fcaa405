"""Damaged or odd checkpoint files give a clear error naming the file and the fault.

Issue 22: no raw numpy/json/msgpack/tensorstore/Orbax traceback, and no silent
reinterpretation of a config. Every case builds a small healthy checkpoint with
the module's own writers, damages one file, and checks the error type, that the
message names the damaged file, and that it says what is wrong.
"""
import glob
import json
import os
import shutil

import flax
import numpy as np
import pytest

from spec_cascade import checkpoints as C
from test_checkpoints import V11, _params, write_t5x_checkpoint


def _expect(exc_type, fn, path, phrase):
  """Runs fn; asserts exc_type with `path` and `phrase` in the message."""
  with pytest.raises(exc_type) as info:
    fn()
  message = str(info.value)
  assert str(path) in message, message
  assert phrase in message, message
  return message


# Healthy checkpoints are written once per module; each test damages a copy.

@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
  root = tmp_path_factory.mktemp("healthy")
  params = _params(V11)
  C.export_hf(params, V11, str(root / "hf"))
  write_t5x_checkpoint(root / "t5x", params)
  C.save_checkpoint(str(root / "ours"), params, V11)
  return root


@pytest.fixture
def hf_dir(healthy, tmp_path):
  return shutil.copytree(healthy / "hf", tmp_path / "hf")


@pytest.fixture
def t5x_dir(healthy, tmp_path):
  return shutil.copytree(healthy / "t5x", tmp_path / "t5x")


@pytest.fixture
def ours_dir(healthy, tmp_path):
  return shutil.copytree(healthy / "ours", tmp_path / "ours")


# ---------------------------------------------------------------- safetensors

def _f32(shape, begin, end):
  return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


def _container(header, data=b""):
  """Bytes of a safetensors file; `header` is a JSON-able object or raw bytes."""
  raw = header if isinstance(header, bytes) else json.dumps(header).encode()
  return len(raw).to_bytes(8, "little") + raw + data


_LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
                b"oid sha256:4d7a2146a1e5d3c1b7f0e0b5c1f3a9d8e6b4c2a0f1e3d5c7b9a8f6e4d2c0b1a3\n"
                b"size 242065649\n")

# (id, file bytes, phrase the message must contain)
_SAFETENSORS_CASES = [
    ("shorter_than_8_bytes", b"\x01\x02\x03", "shorter than the 8-byte header length"),
    ("header_length_past_end", (1000).to_bytes(8, "little") + b"{}",
     "header length 1000 is larger than the 2 bytes"),
    ("git_lfs_pointer", _LFS_POINTER, "git lfs pull"),
    ("header_not_json", _container(b"{not json"), "is not valid JSON"),
    ("header_not_utf8", _container(b"\xff\xfe\x00{"), "is not valid JSON"),
    ("header_is_a_list", _container([1, 2]), "JSON array at the top level"),
    ("entry_not_a_dict", _container({"w": 5}), "header entry is a int"),
    ("offsets_out_of_order", _container({"w": _f32([2], 8, 0)}, bytes(8)), "out of order"),
    ("offsets_overlap_header", _container({"w": _f32([2], -4, 4)}, bytes(8)),
     "overlapping the header"),
    ("offsets_past_end", _container({"w": _f32([4], 0, 16)}, bytes(8)),
     "run past the end of the file"),
    ("offsets_disagree_with_shape", _container({"w": _f32([3], 0, 8)}, bytes(8)),
     "shape (3,) of F32 needs 12"),
    ("offsets_not_a_pair", _container({"w": _f32([2], 0, 8) | {"data_offsets": [0]}},
                                      bytes(8)), "is not a pair of integers"),
    ("bad_shape", _container({"w": _f32([-2], 0, 8)}, bytes(8)),
     "is not a list of non-negative integers"),
    ("unknown_dtype", _container({"w": {"dtype": "Q4", "shape": [2],
                                        "data_offsets": [0, 8]}}, bytes(8)),
     "dtype 'Q4', which this reader does not know"),
    ("tensors_overlap", _container({"a": _f32([2], 0, 8), "b": _f32([2], 4, 12)}, bytes(12)),
     "overlapping data_offsets"),
]


@pytest.mark.parametrize("content,phrase", [c[1:] for c in _SAFETENSORS_CASES],
                         ids=[c[0] for c in _SAFETENSORS_CASES])
def test_damaged_safetensors_file(tmp_path, content, phrase):
  path = tmp_path / "model.safetensors"
  path.write_bytes(content)
  _expect(ValueError, lambda: C.read_safetensors_lazy(str(path)), path, phrase)


def test_healthy_hand_written_safetensors_still_reads(tmp_path):
  # The checks must not refuse a valid file, including a zero-size tensor.
  data = np.arange(3, dtype=np.float32).tobytes()
  path = tmp_path / "ok.safetensors"
  path.write_bytes(_container({"__metadata__": {"format": "pt"}, "w": _f32([3], 0, 12),
                               "empty": _f32([0, 4], 12, 12)}, data))
  lazy = C.read_safetensors_lazy(str(path))
  np.testing.assert_array_equal(lazy["w"].get(), [0, 1, 2])
  assert lazy["empty"].get().shape == (0, 4)


def test_truncated_model_safetensors_in_hf_dir(hf_dir):
  # A download cut short: the header is intact, the data is not all there.
  path = hf_dir / "model.safetensors"
  path.write_bytes(path.read_bytes()[:-100])
  _expect(ValueError, lambda: C.load_params(str(hf_dir)), path,
          "run past the end of the file")


def test_missing_shard_file_is_named(hf_dir):
  (hf_dir / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"shared.weight": "model-00001-of-00002.safetensors"}}))
  _expect(FileNotFoundError, lambda: C.load_params(str(hf_dir)),
          hf_dir / "model.safetensors.index.json", "names shards that are missing")


def test_tensor_in_two_shards_is_refused(hf_dir):
  shutil.copy(hf_dir / "model.safetensors", hf_dir / "model-extra.safetensors")
  (hf_dir / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"shared.weight": "model.safetensors",
                      "lm_head.weight": "model-extra.safetensors"}}))
  _expect(ValueError, lambda: C.load_params(str(hf_dir)), hf_dir / "model-extra.safetensors",
          "is stored twice")


# ------------------------------------------------------------------ HF JSON files

@pytest.mark.parametrize("name,content,phrase", [
    ("config.json", "{\"d_model\": 32,", "is not valid JSON"),
    ("config.json", "[]", "JSON array at the top level"),
    ("model.safetensors.index.json", "{\"weight_map\": {", "is not valid JSON"),
    ("model.safetensors.index.json", "\"weights\"", "JSON string at the top level"),
    ("model.safetensors.index.json", "{\"metadata\": {}}", "has no 'weight_map'"),
], ids=["config_truncated", "config_is_list", "index_truncated", "index_is_string",
        "index_without_weight_map"])
def test_damaged_hf_json(hf_dir, name, content, phrase):
  (hf_dir / name).write_text(content)
  _expect(ValueError, lambda: C.load_params(str(hf_dir)), hf_dir / name, phrase)


@pytest.mark.parametrize("torch_file", ["pytorch_model.bin", "pytorch_model.bin.index.json"])
def test_pytorch_only_hf_dir_asks_for_safetensors(hf_dir, torch_file):
  os.remove(hf_dir / "model.safetensors")
  (hf_dir / torch_file).write_bytes(b"PK\x03\x04 not really a torch pickle")
  assert C.detect_format(str(hf_dir)) == "hf"
  message = _expect(FileNotFoundError, lambda: C.load_params(str(hf_dir)), hf_dir,
                    "convert them to safetensors")
  assert torch_file in message


def test_pytorch_bin_without_config_asks_for_safetensors(tmp_path):
  (tmp_path / "pytorch_model.bin").write_bytes(b"PK")
  _expect(FileNotFoundError, lambda: C.load_params(str(tmp_path)), tmp_path,
          "convert them to safetensors")


# ---------------------------------------------------------- HF config.json fields

def _edit_config(hf_dir, **changes):
  cfg = json.loads((hf_dir / "config.json").read_text())
  cfg.update(changes)
  (hf_dir / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,phrase", [
    ({"dense_act_fn": "relu"}, "dense_act_fn is 'relu' but feed_forward_proj 'gated-gelu'"),
    # HF's plain 'gelu' is the erf form; ours is the tanh approximation.
    ({"dense_act_fn": "gelu"}, "dense_act_fn is 'gelu'"),
    ({"is_gated_act": False}, "is_gated_act is False but feed_forward_proj 'gated-gelu'"),
    ({"decoder_start_token_id": 2}, "decoder_start_token_id is 2, but this T5 "
     "implementation uses 0"),
    ({"eos_token_id": 2}, "eos_token_id is 2, but this T5 implementation uses 1"),
    ({"pad_token_id": 1}, "pad_token_id is 1, but this T5 implementation uses 0"),
    ({"d_model": "wide"}, "d_model is 'wide', not an integer"),
    ({"vocab_size": -5}, "vocab_size must be a positive int"),
], ids=["dense_act_fn_relu", "dense_act_fn_erf_gelu", "is_gated_act", "decoder_start",
        "eos", "pad", "d_model_not_int", "vocab_negative"])
def test_contradictory_hf_config_is_refused(hf_dir, changes, phrase):
  _edit_config(hf_dir, **changes)
  _expect(ValueError, lambda: C.load_params(str(hf_dir)), hf_dir / "config.json", phrase)


@pytest.mark.parametrize("changes", [
    # What transformers writes for T5 v1.1 / Flan-T5 / mT5 today.
    {"dense_act_fn": "gelu_new", "is_gated_act": True, "decoder_start_token_id": 0,
     "eos_token_id": 1, "pad_token_id": 0},
    {"dense_act_fn": "gelu_pytorch_tanh"},  # another name for the tanh approximation
    {"eos_token_id": [1], "decoder_start_token_id": None},  # list form; unstated start
], ids=["flan_t5_style", "gelu_pytorch_tanh", "eos_list"])
def test_consistent_hf_configs_still_load(hf_dir, changes):
  _edit_config(hf_dir, **changes)
  _, config = C.load_params(str(hf_dir))
  assert config.mlp_activations == ("gelu", "linear")


# ------------------------------------------------------------------------- T5X

@pytest.mark.parametrize("damage,phrase", [
    (lambda raw: raw[: len(raw) // 2], "cannot be decoded as msgpack"),
    (lambda raw: b"\xc1" + raw[1:], "cannot be decoded as msgpack"),
    (lambda raw: raw + b"\x00\x01", "cannot be decoded as msgpack"),
    (lambda raw: b"", "is an empty file"),
    (lambda raw: flax.serialization.msgpack_serialize({"version": "3"}),
     "'version' is '3', not an integer"),
    (lambda raw: flax.serialization.msgpack_serialize({"version": 3, "optimizer": {
        "target": []}}), "'optimizer/target' is list"),
], ids=["truncated", "garbled", "trailing_bytes", "empty", "version_string", "target_list"])
def test_damaged_t5x_msgpack(t5x_dir, damage, phrase):
  path = t5x_dir / "checkpoint"
  path.write_bytes(damage(path.read_bytes()))
  _expect(ValueError, lambda: C.load_params(str(t5x_dir)), path, phrase)


_T5X_ARRAY = "target.encoder.layers_0.mlp.wo.kernel"
_T5X_PARAM = "encoder/layers_0/mlp/wo/kernel"


def test_t5x_array_folder_missing(t5x_dir):
  shutil.rmtree(t5x_dir / _T5X_ARRAY)
  message = _expect(FileNotFoundError, lambda: C.load_params(str(t5x_dir)),
                    t5x_dir / "checkpoint", f"the array of parameter {_T5X_PARAM} is missing")
  assert str(t5x_dir / _T5X_ARRAY) in message


def test_t5x_array_metadata_damaged(t5x_dir):
  (t5x_dir / _T5X_ARRAY / ".zarray").write_text("{\"zarr_format\": ")
  message = _expect(ValueError, lambda: C.load_params(str(t5x_dir)), t5x_dir / "checkpoint",
                    "its zarr metadata (.zarray) is missing or damaged")
  assert _T5X_PARAM in message and "tensorstore_spec" not in message


def test_t5x_array_chunk_damaged(t5x_dir):
  chunk = next(p for p in sorted((t5x_dir / _T5X_ARRAY).iterdir())
               if not p.name.startswith("."))
  chunk.write_bytes(b"not gzip data")
  message = _expect(ValueError, lambda: C.load_params(str(t5x_dir)), t5x_dir / "checkpoint",
                    "a chunk file is damaged or truncated")
  assert _T5X_PARAM in message


# ----------------------------------------------------------------- ours (Orbax)

@pytest.mark.parametrize("content,phrase", [
    ("{\"format\": \"spec_cascade.orbax\", ", "is not valid JSON"),
    ("\"spec_cascade.orbax\"", "JSON string at the top level"),
    (json.dumps({"format": "spec_cascade.orbax", "format_version": 1}),
     "'t5_config' is missing or not an object"),
    (json.dumps({"format": "spec_cascade.orbax", "format_version": "1"}),
     "is not one this code reads"),
    (json.dumps({"format": "spec_cascade.orbax", "format_version": 1,
                 "t5_config": {"vocab_size": 0}}), "invalid T5Config"),
    (json.dumps({"format": "spec_cascade.orbax", "format_version": 1,
                 "t5_config": {}, "vocabulary_path": 7}), "vocabulary_path is 7"),
], ids=["truncated", "is_string", "no_t5_config", "version_string", "bad_config_value",
        "vocabulary_path_not_str"])
def test_damaged_checkpoint_info(ours_dir, content, phrase):
  path = ours_dir / C.INFO_FILE
  path.write_text(content)
  _expect(ValueError, lambda: C.load_params(str(ours_dir)), path, phrase)


def test_our_params_folder_missing(ours_dir):
  shutil.rmtree(ours_dir / C.PARAMS_SUBDIR)
  _expect(FileNotFoundError, lambda: C.load_params(str(ours_dir)),
          ours_dir / C.PARAMS_SUBDIR, "is missing")


def test_our_params_metadata_damaged(ours_dir):
  (ours_dir / C.PARAMS_SUBDIR / "_METADATA").write_text("{\"tree_metadata\": ")
  _expect(ValueError, lambda: C.load_params(str(ours_dir)), ours_dir / C.PARAMS_SUBDIR,
          "holds no readable Orbax parameter metadata")


def test_our_params_array_data_damaged(ours_dir):
  # Array chunks live under ocdbt.process_<i>/d/ (params/d/ holds metadata).
  data = glob.glob(str(ours_dir / C.PARAMS_SUBDIR / "ocdbt.process_*" / "d" / "*"))
  assert data, "Orbax layout changed: no data files found"
  for file in data:
    with open(file, "wb") as f:
      f.write(b"xx")
  _expect(ValueError, lambda: C.load_params(str(ours_dir)), ours_dir / C.PARAMS_SUBDIR,
          "Orbax could not restore the arrays")
