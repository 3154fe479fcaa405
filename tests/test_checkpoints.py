"""Checkpoints: T5X (v2/v3, msgpack + zarr), HF safetensors, Orbax, detection, gin, CLI."""
import json
import os
import subprocess
import sys
import textwrap

import flax
import gin
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from device_env import cpu_devices_env
from spec_cascade import checkpoints as C
from spec_cascade import convert
from spec_cascade.models import T5Config, T5Model

V11 = T5Config(vocab_size=96, emb_dim=32, num_heads=2, num_encoder_layers=2,
               num_decoder_layers=1, head_dim=8, mlp_dim=48)
V10 = V11.replace(mlp_activations=("relu",), logits_via_embedding=True, num_decoder_layers=2)


def _params(config, seed=0):
  """Random float32 params in the model's tree (numpy: no init compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(size=s.shape).astype(np.float32) * 0.3),
      T5Model(config).abstract_params())


def _flat_np(params):
  return {p: np.asarray(x) for p, x in C.flatten(params).items()}


def _assert_same(a, b, dtype=np.float32):
  fa, fb = _flat_np(a), _flat_np(b)
  assert sorted(fa) == sorted(fb)
  for p in fa:
    np.testing.assert_array_equal(fa[p].astype(dtype), fb[p].astype(dtype), err_msg=p)


_FORWARD = {}


def _jitted_forward(config):
  """One compiled forward per config across tests."""
  if config not in _FORWARD:
    _FORWARD[config] = jax.jit(T5Model(config).forward)
  return _FORWARD[config]


def _tokens(config, seed=1):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, config.vocab_size, (2, 7)).astype(np.int32)
  enc[1, 5:] = 0  # padding
  dec = rng.integers(2, config.vocab_size, (2, 5)).astype(np.int32)
  dec[:, 0] = 0
  return jnp.asarray(enc), jnp.asarray(dec)


def write_t5x_checkpoint(ckpt_dir, params, version=3, stored_dtype="float32",
                         inline=("scale",)):
  """Writes `params` the way T5X does: msgpack `checkpoint` + zarr arrays.

  Arrays named like T5X's ('target.encoder.layers_0.mlp.wi_0.kernel'); leaves whose
  last name is in `inline` go into the msgpack itself. Version 2 stores bfloat16 as
  uint16. Optimizer state points at arrays that do not exist: reading it would fail.
  """
  import tensorstore as ts
  os.makedirs(ckpt_dir, exist_ok=True)
  specs = {}
  for path, x in C.flatten(params).items():
    x = np.asarray(x, np.float32)
    if stored_dtype == "bfloat16":
      x = x.astype(ml_dtypes.bfloat16)
      if version == 2:
        x = x.view(np.uint16)
    if path.split("/")[-1] in inline:
      specs[path] = x
      continue
    rel = "target." + path.replace("/", ".")
    zdtype = {"float32": "<f4", "bfloat16": "bfloat16"}[stored_dtype]
    if version == 2 and stored_dtype == "bfloat16":
      zdtype = "<u2"
    metadata = {"compressor": {"id": "gzip"}, "shape": list(x.shape),
                "chunks": [max(1, s // 2) for s in x.shape], "dtype": zdtype}
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file",
                                                     "path": os.path.join(ckpt_dir, rel)},
                     "metadata": metadata}, create=True).result()
    store.write(x).result()
    specs[path] = {"driver": "zarr", "dtype": str(x.dtype),
                   "kvstore": {"driver": "file", "path": rel},
                   "metadata": {**metadata, "chunks": np.array(metadata["chunks"])}}
  state = {"step": np.int32(100), "param_states": {
      "encoder": {"encoder_norm": {"scale": {"v": np.ones(4, np.float32)}}},
      "token_embedder": {"embedding": {"v_row": {
          "driver": "zarr", "kvstore": {"driver": "file",
                                        "path": "state.param_states.token_embedder.missing"},
          "metadata": {"shape": [7], "chunks": np.array([7]), "compressor": None}}}}}}
  contents = {"version": version,
              "optimizer": {"target": C.unflatten(specs), "state": state}}
  with open(os.path.join(ckpt_dir, "checkpoint"), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(contents))


# ---------------------------------------------------------------------------- T5X

@pytest.mark.parametrize("version,stored", [(3, "float32"), (3, "bfloat16"), (2, "bfloat16")])
def test_t5x_checkpoint_loads_identical_arrays_and_logits(tmp_path, version, stored):
  params = _params(V11)
  write_t5x_checkpoint(tmp_path / "model" / "checkpoint_100", params, version, stored)
  # A lexicographically larger but older step must not be picked.
  write_t5x_checkpoint(tmp_path / "model" / "checkpoint_99", _params(V11, seed=5), 3)
  assert C.detect_format(tmp_path / "model") == "t5x"
  loaded, config = C.load_params(str(tmp_path / "model"))
  assert config == V11  # inferred from the shapes
  want = params if stored == "float32" else jax.tree_util.tree_map(
      lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
  _assert_same(loaded, want)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(loaded))
  model = T5Model(config)
  enc, dec = _tokens(config)
  forward = _jitted_forward(config)
  np.testing.assert_array_equal(forward(loaded, enc, dec), forward(want, enc, dec))
  # Restoring as bfloat16 gives the bfloat16 rounding of the stored values.
  bf, _ = C.load_params(str(tmp_path / "model" / "checkpoint_100"), dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(bf))
  _assert_same(bf, jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), want))


def test_t5x_v10_layout_and_msgpack_file_path(tmp_path):
  params = _params(V10)
  write_t5x_checkpoint(tmp_path / "checkpoint_7", params, inline=())
  loaded, config = C.load_params(str(tmp_path / "checkpoint_7" / "checkpoint"))
  assert config == V10
  _assert_same(loaded, params)


def test_t5x_uint16_in_version3_is_refused(tmp_path):
  write_t5x_checkpoint(tmp_path / "c", _params(V11), version=2, stored_dtype="bfloat16")
  path = tmp_path / "c" / "checkpoint"
  contents = flax.serialization.msgpack_restore(path.read_bytes())
  contents["version"] = 3
  path.write_bytes(flax.serialization.msgpack_serialize(contents))
  with pytest.raises(ValueError, match="uint16 array in a version-3"):
    C.load_params(str(tmp_path / "c"))


def test_t5x_wrong_shape_and_missing_array_messages(tmp_path):
  write_t5x_checkpoint(tmp_path / "c", _params(V11))
  with pytest.raises(ValueError, match=r"decoder/layers_0/mlp/wo/kernel|"
                     r"parameter \S+ has shape \(32, 48\) in the checkpoint, the config "
                     r"expects \(32, 64\)"):
    C.load_params(str(tmp_path / "c"), config=V11.replace(mlp_dim=64))
  with pytest.raises(ValueError, match=r"decoder/layers_1/\S+ \(shape .*\) is missing"):
    C.load_params(str(tmp_path / "c"), config=V11.replace(num_decoder_layers=2))
  import shutil
  shutil.rmtree(tmp_path / "c" / "target.encoder.layers_1.mlp.wo.kernel")
  with pytest.raises(FileNotFoundError, match="encoder/layers_1/mlp/wo/kernel"):
    C.load_params(str(tmp_path / "c"))


def test_infer_config_from_shapes():
  for config in (V11, V10):
    shapes = {p: s.shape for p, s in C.flatten(T5Model(config).abstract_params()).items()}
    assert C.infer_config(shapes) == config
  with pytest.raises(ValueError, match="Unknown checkpoint layout"):
    C.infer_config({"foo/kernel": (2, 2)})


def test_gcs_kvstore_spec():
  assert C._kvstore_spec("gs://t5-data/pretrained_models/x/target.a.b") == {
      "driver": "gcs", "bucket": "t5-data", "path": "pretrained_models/x/target.a.b"}
  assert C._join("gs://b/ckpt", "checkpoint_1", "checkpoint") == "gs://b/ckpt/checkpoint_1/checkpoint"


# ----------------------------------------------------------------------------- HF

@pytest.mark.parametrize("config", [V11, V10], ids=["v1.1", "v1.0"])
def test_hf_export_import_round_trip(tmp_path, config):
  params = _params(config)
  C.export_hf(params, config, str(tmp_path))
  names = set(C.read_safetensors_lazy(str(tmp_path / "model.safetensors")))
  assert ("lm_head.weight" in names) == (not config.logits_via_embedding)
  assert "encoder.block.1.layer.1.DenseReluDense." + (
      "wi_0.weight" if config.mlp_activations[0] == "gelu" else "wi.weight") in names
  loaded, got = C.load_params(str(tmp_path))
  assert got == config.replace(dropout_rate=0.0)
  _assert_same(loaded, params)


def test_hf_sharded_index_and_bfloat16_files(tmp_path):
  from safetensors.numpy import save_file
  params = _params(V11)
  C.export_hf(params, V11, str(tmp_path / "one"), dtype="bfloat16")
  tensors = {n: a.get() for n, a in
             C.read_safetensors_lazy(str(tmp_path / "one" / "model.safetensors")).items()}
  assert tensors["shared.weight"].dtype == ml_dtypes.bfloat16
  shard_dir = tmp_path / "sharded"
  shard_dir.mkdir()
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  for file, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, str(shard_dir / file))
  (shard_dir / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {k: f for f, keys in shards.items() for k in keys}}))
  (shard_dir / "config.json").write_text((tmp_path / "one" / "config.json").read_text())
  loaded, _ = C.load_params(str(shard_dir))
  _assert_same(loaded, jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params))
  os.remove(shard_dir / "model-00002-of-00002.safetensors")
  with pytest.raises(FileNotFoundError, match="missing"):
    C.load_params(str(shard_dir))


def _rewrite_hf(path, drop=(), add=None, **config_changes):
  from safetensors.numpy import save_file
  tensors = {n: a.get() for n, a in C.read_safetensors_lazy(str(path / "model.safetensors")).items()
             if n not in drop}
  tensors.update(add or {})
  save_file(tensors, str(path / "model.safetensors"))
  cfg = json.loads((path / "config.json").read_text())
  cfg.update(config_changes)
  (path / "config.json").write_text(json.dumps(cfg))


def test_hf_output_layer_variants(tmp_path):
  """transformers-5 v1.1 (lm_head tied to shared, unscaled) and a scaled untied head."""
  params = _params(V11)
  flat = _flat_np(params)
  C.export_hf(params, V11, str(tmp_path))
  _rewrite_hf(tmp_path, drop=("lm_head.weight",), tie_word_embeddings=True,
              scale_decoder_outputs=False)
  loaded, config = C.load_params(str(tmp_path))
  assert not config.logits_via_embedding
  np.testing.assert_array_equal(np.asarray(C.flatten(loaded)["decoder/logits_dense/kernel"]),
                                flat["token_embedder/embedding"].T)
  head = np.random.default_rng(0).normal(size=flat["token_embedder/embedding"].shape)
  _rewrite_hf(tmp_path, add={"lm_head.weight": head.astype(np.float32)},
              scale_decoder_outputs=True)
  loaded, config = C.load_params(str(tmp_path))
  assert not config.logits_via_embedding
  np.testing.assert_allclose(np.asarray(C.flatten(loaded)["decoder/logits_dense/kernel"]),
                             head.T * V11.emb_dim ** -0.5, rtol=1e-6)


def test_hf_unknown_layouts_are_refused(tmp_path):
  C.export_hf(_params(V11), V11, str(tmp_path))
  _rewrite_hf(tmp_path, add={"encoder.block.1.layer.0.SelfAttention.relative_attention_bias"
                             ".weight": np.zeros((32, 2), np.float32)})
  with pytest.raises(ValueError, match="unexpected HF tensors"):
    C.load_params(str(tmp_path))
  _rewrite_hf(tmp_path, model_type="umt5")
  with pytest.raises(ValueError, match="model_type 'umt5'"):
    C.load_params(str(tmp_path))
  _rewrite_hf(tmp_path, model_type="t5", feed_forward_proj="gelu")
  with pytest.raises(ValueError, match="tanh approximation"):
    C.load_params(str(tmp_path))


def test_hf_missing_tensor_is_named(tmp_path):
  C.export_hf(_params(V11), V11, str(tmp_path))
  _rewrite_hf(tmp_path, drop=("decoder.block.0.layer.2.DenseReluDense.wo.weight",))
  with pytest.raises(ValueError, match=r"decoder\.block\.0\.layer\.2\.DenseReluDense\.wo\.weight"
                     r" \(for parameter decoder/layers_0/mlp/wo/kernel\) is missing"):
    C.load_params(str(tmp_path))


# -------------------------------------------------------------------------- Orbax

def test_orbax_round_trip_with_config_and_vocabulary(tmp_path):
  params = _params(V10)
  C.save_checkpoint(str(tmp_path / "ck"), params, V10, vocabulary_path="spm.model")
  info = C.read_checkpoint_info(str(tmp_path / "ck"))
  assert info["config"] == V10
  assert info["vocabulary_path"] == str(tmp_path / "ck" / "spm.model")
  loaded, config = C.load_params(str(tmp_path / "ck"))
  assert config == V10
  _assert_same(loaded, params)
  # A config with different run-time fields is accepted and returned.
  _, config = C.load_params(str(tmp_path / "ck"), config=V10.replace(dtype="bfloat16"))
  assert config.dtype == "bfloat16"
  with pytest.raises(ValueError, match=r"mlp_dim: checkpoint 48 vs given 64"):
    C.load_params(str(tmp_path / "ck"), config=V10.replace(mlp_dim=64))
  with pytest.raises(FileExistsError, match="force=True"):
    C.save_checkpoint(str(tmp_path / "ck"), params, V10)
  with pytest.raises(ValueError, match="Parameter decoder/layers_0/mlp/wi/kernel"):
    C.save_checkpoint(str(tmp_path / "bad"), params, V10.replace(mlp_dim=64))


_MESH_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from spec_cascade import checkpoints as C
    from spec_cascade.models import T5Model
    from test_checkpoints import V11, write_t5x_checkpoint
    assert jax.device_count() == 4, jax.devices()
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(1, 4), ("data", "model"))

    def spec(path, shape):
      # T5X rules: vocab and mlp over 'model', embed replicated.
      if path == "token_embedder/embedding" or path.endswith("mlp/wo/kernel"):
        return NamedSharding(mesh, P("model", None))
      if path.endswith("logits_dense/kernel") or "/mlp/wi" in path:
        return NamedSharding(mesh, P(None, "model"))
      return NamedSharding(mesh, P())

    params = jax.tree_util.tree_map(lambda s: jax.numpy.asarray(
        np.random.default_rng(0).normal(size=s.shape), np.float32), T5Model(V11).abstract_params())
    sharded = {{}}
    for p, x in C.flatten(params).items():
      sharded[p] = jax.device_put(x, spec(p, x.shape))
    C.save_checkpoint({dst!r}, C.unflatten(sharded), V11)
    write_t5x_checkpoint({t5x!r}, params)
    for path, dtype in (({dst!r}, "float32"), ({dst!r}, "bfloat16"), ({t5x!r}, "float32")):
      restored, config = C.load_params(path, dtype=dtype, sharding=spec)
      assert config == V11
      for p, x in C.flatten(restored).items():
        want = spec(p, x.shape)
        assert x.sharding.is_equivalent_to(want, x.ndim), (p, x.sharding, want)
        assert x.dtype == np.dtype(dtype), (p, x.dtype)
        np.testing.assert_array_equal(np.asarray(x, np.float32),
            np.asarray(C.flatten(params)[p].astype(dtype), np.float32), err_msg=p)
        if p == "token_embedder/embedding":
          assert x.addressable_shards[0].data.shape == (V11.vocab_size // 4, V11.emb_dim)
    # The target form: a tree of ShapeDtypeStructs carrying NamedShardings.
    target = jax.tree_util.tree_map_with_path(
        lambda kp, s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=spec(
            "/".join(k.key for k in kp), s.shape)), T5Model(V11).abstract_params())
    restored, _ = C.load_params({dst!r}, sharding=target)
    for p, x in C.flatten(restored).items():
      assert x.sharding.is_equivalent_to(spec(p, x.shape), x.ndim), p
    print("MESH_OK")
""")


def test_orbax_and_t5x_restore_onto_4_device_mesh(tmp_path):
  script = _MESH_SCRIPT.format(tests=os.path.dirname(__file__), dst=str(tmp_path / "ck"),
                               t5x=str(tmp_path / "t5x"))
  env = cpu_devices_env(4)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True,
                       text=True, timeout=300)
  assert "MESH_OK" in out.stdout, out.stderr[-3000:]


# ------------------------------------------------------- detection, errors, gin, CLI

def test_detection_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    C.load_params(str(tmp_path / "nope"))
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "weights.bin").write_bytes(b"x")
  with pytest.raises(ValueError, match=r"Unknown checkpoint layout .*weights\.bin"):
    C.load_params(str(tmp_path / "junk"))
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text("{}")
  (tmp_path / "hf" / "x.safetensors.txt").write_text("")
  with pytest.raises(ValueError, match="Unknown checkpoint layout"):
    C.load_params(str(tmp_path / "hf"))
  with pytest.raises(ValueError, match="'float32' or 'bfloat16'"):
    C.materialize({}, dtype="float16")


def test_check_same_vocabulary():
  C.check_same_vocabulary(V11, V10)
  with pytest.raises(ValueError, match="Drafter vocab_size 96 != verifier vocab_size 128"):
    C.check_same_vocabulary(V11, V10.replace(vocab_size=128))


def test_gin_drafter_and_verifier_paths(tmp_path):
  C.save_checkpoint(str(tmp_path / "d"), _params(V11), V11)
  C.save_checkpoint(str(tmp_path / "v"), _params(V10, 3), V10)
  C.save_checkpoint(str(tmp_path / "w"), _params(V10.replace(vocab_size=128)),
                    V10.replace(vocab_size=128))
  gin.clear_config()
  try:
    gin.parse_config(f"""
        DRAFTER_CHECKPOINT_PATH = '{tmp_path / "d"}'
        VERIFIER_CHECKPOINT_PATH = '{tmp_path / "v"}'
        spec_cascade.checkpoints.load_drafter_and_verifier.drafter_path = %DRAFTER_CHECKPOINT_PATH
        spec_cascade.checkpoints.load_drafter_and_verifier.verifier_path = %VERIFIER_CHECKPOINT_PATH
        drafter/spec_cascade.checkpoints.load_model.path = %DRAFTER_CHECKPOINT_PATH
    """)
    (drafter, _), (verifier, vparams) = C.load_drafter_and_verifier()
    assert drafter.config == V11 and verifier.config == V10
    with gin.config_scope("drafter"):
      model, _ = C.load_model()
    assert model.config == V11
    gin.bind_parameter("spec_cascade.checkpoints.load_drafter_and_verifier.verifier_path",
                       str(tmp_path / "w"))
    with pytest.raises(ValueError, match="one vocabulary"):
      C.load_drafter_and_verifier()
  finally:
    gin.clear_config()


def test_convert_cli_hf_and_t5x(tmp_path):
  params = _params(V11)
  C.export_hf(params, V11, str(tmp_path / "hf"))
  (tmp_path / "hf" / "spiece.model").write_bytes(b"not really sentencepiece")
  rc = convert.main(["--from", "hf", str(tmp_path / "hf"), "--to", str(tmp_path / "out"),
                     "--dtype", "bfloat16", "--gin_scope", "drafter",
                     "--checkpoint_macro", "DRAFTER_CHECKPOINT_PATH"])
  assert rc == 0
  info = C.read_checkpoint_info(str(tmp_path / "out"))
  assert info["param_dtypes"] == ["bfloat16"] and info["source"].startswith("hf:")
  assert open(info["vocabulary_path"], "rb").read() == b"not really sentencepiece"
  loaded, config = C.load_params(str(tmp_path / "out"))
  _assert_same(loaded, jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params))
  gin.clear_config()
  try:
    gin.parse_config_file(str(tmp_path / "out" / convert.GIN_FILE))
    with gin.config_scope("drafter"):
      assert T5Config() == config
    assert gin.query_parameter("DRAFTER_CHECKPOINT_PATH/gin.macro.value") == str(tmp_path / "out")
  finally:
    gin.clear_config()
  write_t5x_checkpoint(tmp_path / "t5x" / "checkpoint_3", params)
  assert convert.main(["--from", "t5x", str(tmp_path / "t5x"), "--to",
                       str(tmp_path / "out2")]) == 0
  _assert_same(C.load_params(str(tmp_path / "out2"))[0], params)
  # Wrong --from, a --config that does not match, an existing DST: clear errors, rc 2.
  with pytest.raises(ValueError, match="looks like a t5x checkpoint"):
    convert.convert("hf", str(tmp_path / "t5x"), str(tmp_path / "out3"))
  with pytest.raises(ValueError, match=r"parameter \S+ .*(is missing|has shape)"):
    convert.convert("t5x", str(tmp_path / "t5x"), str(tmp_path / "out3"),
                    config_name="t5_1_1_small")
  assert convert.main(["--from", "t5x", str(tmp_path / "t5x"), "--to",
                       str(tmp_path / "out2")]) == 2
