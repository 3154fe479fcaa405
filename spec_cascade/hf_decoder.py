"""Hugging Face decoder-only checkpoints (Llama, Gemma, Gemma 2, Qwen2): import, export, and
our own Orbax format for them.

    params, config = load_hf_decoder("/models/gemma-2b")       # config.json + safetensors
    export_hf_decoder(params, config, "/out/gemma-2b-hf")     # transformers loads it
    convert_hf_decoder("/models/gemma-2b", "/ckpt/gemma_2b")  # `convert --from hf` does this

Tensors are read with safetensors_reader.py's numpy reader (single file or sharded with
model.safetensors.index.json), one array at a time. HF stores Linear weights [out, in]; ours
are [in, out]. HF's q/k weights are already in the half-split ("rotate_half") RoPE pairing
that models/decoder_only.py uses, so no permutation is applied (checkpoints converted from
Meta's or Google's interleaved originals were permuted by HF's conversion scripts).

Options we do not implement are refused by name (`UnsupportedHFConfig`) rather than loaded
into a model that would silently compute something else.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Mapping

import jax
import numpy as np

from spec_cascade import checkpoints as C
from spec_cascade.data import model_tokenizer
from spec_cascade.models.decoder_configs import (DecoderConfig, config_from_dict,
                                                 config_to_dict, get_decoder_config)
from spec_cascade.models.decoder_only import DecoderOnlyModel

Params = Any
SUPPORTED_MODEL_TYPES = ("llama", "gemma", "gemma2", "qwen2")
_CAUSAL_LM = {"llama": "LlamaForCausalLM", "gemma": "GemmaForCausalLM",
              "gemma2": "Gemma2ForCausalLM", "qwen2": "Qwen2ForCausalLM"}
INFO_KEY = "decoder_config"  # in spec_cascade_checkpoint.json, in place of 't5_config'


class UnsupportedHFConfig(ValueError):
  """A HF config.json names an architecture or option this library does not implement."""


def _unsupported(where: str, what: str) -> UnsupportedHFConfig:
  return UnsupportedHFConfig(f"{where}: {what}. Supported: model_type in "
                             f"{list(SUPPORTED_MODEL_TYPES)} with the options "
                             "docs/decoder_only.md lists.")


def _rope_fields(hf: Mapping[str, Any], where: str) -> dict[str, Any]:
  """RoPE base and scaling from transformers-5 `rope_parameters` or 4.x `rope_theta` /
  `rope_scaling`."""
  params = dict(hf.get("rope_parameters") or {})
  if not params:
    params = dict(hf.get("rope_scaling") or {})
    params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
  if any(isinstance(v, Mapping) for v in params.values()):
    raise _unsupported(where, "per-layer-type rope_parameters (Gemma 3 style) are not "
                       "implemented")
  try:
    DecoderConfig(rope_scaling=params)
  except ValueError as e:
    raise _unsupported(where, str(e)) from None
  return {"rope_base": float(params["rope_theta"]), "rope_scaling": params}


def _activation(hf: Mapping[str, Any], model_type: str, where: str) -> str:
  # Gemma 2 names it hidden_activation; Gemma's legacy hidden_act='gelu' means the tanh
  # approximation (transformers rewrites it), elsewhere 'gelu' is the exact erf form.
  name = hf.get("hidden_activation") if model_type == "gemma2" else None
  name = name or hf.get("hidden_act", "silu")
  if model_type.startswith("gemma") and name == "gelu":
    name = "gelu_pytorch_tanh"
  ours = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu",
          "gelu_new": "gelu"}.get(name)
  if ours is None:
    raise _unsupported(where, f"activation {name!r} is not implemented (silu and tanh-GELU "
                       "are)")
  return ours


def _eos_id(hf: Mapping[str, Any], where: str) -> int:
  """config.json's eos_token_id (the first of a list: Llama 3 instruct lists several; the
  engine stops at one id); 1 when absent."""
  eos = hf.get("eos_token_id")
  if isinstance(eos, (list, tuple)):
    eos = eos[0] if eos else None
  if eos is None:
    return 1
  if not isinstance(eos, int) or isinstance(eos, bool):
    raise _unsupported(where, f"eos_token_id {eos!r} is not a token id")
  return eos


def config_from_hf(hf: Mapping[str, Any], where: str = "config.json") -> DecoderConfig:
  """A HF decoder-only config.json dict → DecoderConfig; UnsupportedHFConfig if we cannot
  compute what transformers would."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise _unsupported(where, f"model_type {model_type!r} is not supported")
  experts = [k for k in ("num_experts", "num_local_experts", "n_routed_experts")
             if hf.get(k)]
  if experts:
    raise _unsupported(where, f"mixture-of-experts fields {experts} are not implemented")
  for key in ("attention_bias", "mlp_bias", "use_bidirectional_attention",
              "use_sliding_window"):
    if hf.get(key):
      raise _unsupported(where, f"{key}=True is not implemented for {model_type}")
  heads = int(hf["num_attention_heads"])
  fields: dict[str, Any] = dict(
      vocab_size=int(hf["vocab_size"]), emb_dim=int(hf["hidden_size"]), num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
      mlp_dim=int(hf["intermediate_size"]), num_layers=int(hf["num_hidden_layers"]),
      mlp_activation=_activation(hf, model_type, where),
      layer_norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", model_type.startswith("gemma"))),
      eos_id=_eos_id(hf, where), **_rope_fields(hf, where))
  if model_type == "qwen2":
    fields["qkv_bias"] = True
  if model_type.startswith("gemma"):
    fields.update(scale_embeddings=True, norm_scale_plus_one=True)
  layer_types = list(hf.get("layer_types") or [])
  if model_type == "gemma2":
    fields.update(
        post_norms=True, query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
        attn_logit_softcap=hf.get("attn_logit_softcapping"),
        final_logit_softcap=hf.get("final_logit_softcapping"),
        sliding_window=hf.get("sliding_window"), sliding_window_pattern=2)
    expected = ["sliding_attention" if (i + 1) % 2 else "full_attention"
                for i in range(fields["num_layers"])]
    if layer_types and layer_types != expected:
      raise _unsupported(where, "Gemma 2 layer_types other than sliding/full alternation "
                         "starting with sliding are not implemented")
  elif any(t != "full_attention" for t in layer_types):
    raise _unsupported(where, f"layer_types {sorted(set(layer_types))}: only full attention "
                       f"is implemented for {model_type}")
  try:
    config = DecoderConfig(**fields)
  except ValueError as e:
    raise _unsupported(where, str(e)) from None
  if config.family != model_type:
    raise _unsupported(where, f"the options make a {config.family!r} model, not "
                       f"{model_type!r} (e.g. Gemma 2 without soft-capping)")
  return config


def config_to_hf(config: DecoderConfig) -> dict[str, Any]:
  """DecoderConfig → a transformers-5 config.json dict; ValueError for a 'custom' mix."""
  model_type = config.family
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"{config} mixes options of different architectures; no HF "
                     "model_type computes it, so it cannot be exported.")
  scalar = config.query_pre_attn_scalar
  if scalar is not None and not float(scalar).is_integer():
    raise ValueError(f"query_pre_attn_scalar={scalar} is not an integer, which transformers' "
                     "Gemma2Config requires; this config cannot be exported.")
  rope = {"rope_type": "default", "rope_theta": config.rope_base}
  rope.update(dict(config.rope_scaling or {}))
  hf = {
      "architectures": [_CAUSAL_LM[model_type]], "model_type": model_type,
      "vocab_size": config.vocab_size, "hidden_size": config.emb_dim,
      "intermediate_size": config.mlp_dim, "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim, "rms_norm_eps": config.layer_norm_epsilon,
      "tie_word_embeddings": config.tie_embeddings, "rope_parameters": rope,
      "hidden_act": {"silu": "silu", "gelu": "gelu_pytorch_tanh"}[config.mlp_activation],
      "attention_dropout": 0.0, "use_cache": True, "eos_token_id": config.eos_id,
  }
  if model_type in ("llama", "gemma", "gemma2"):
    hf["attention_bias"] = False
  if model_type == "gemma2":
    hf.update(hidden_activation=hf["hidden_act"],
              # transformers' strict config takes an int here (all released ones are).
              query_pre_attn_scalar=int(config.query_pre_attn_scalar or config.head_dim),
              attn_logit_softcapping=config.attn_logit_softcap,
              final_logit_softcapping=config.final_logit_softcap,
              sliding_window=config.sliding_window,
              layer_types=["sliding_attention" if config.is_sliding(i) else "full_attention"
                           for i in range(config.num_layers)])
  return hf


# Our per-layer names → HF's (under model.layers.{i}.); Gemma 2 renames the norms.
_LAYER = {
    "self_attention/query/kernel": "self_attn.q_proj.weight",
    "self_attention/key/kernel": "self_attn.k_proj.weight",
    "self_attention/value/kernel": "self_attn.v_proj.weight",
    "self_attention/out/kernel": "self_attn.o_proj.weight",
    "self_attention/query/bias": "self_attn.q_proj.bias",
    "self_attention/key/bias": "self_attn.k_proj.bias",
    "self_attention/value/bias": "self_attn.v_proj.bias",
    "mlp/wi_0/kernel": "mlp.gate_proj.weight",
    "mlp/wi_1/kernel": "mlp.up_proj.weight",
    "mlp/wo/kernel": "mlp.down_proj.weight",
    "pre_self_attention_layer_norm/scale": "input_layernorm.weight",
    "pre_mlp_layer_norm/scale": "post_attention_layernorm.weight",
}
_LAYER_POST_NORMS = {
    "pre_self_attention_layer_norm/scale": "input_layernorm.weight",
    "post_self_attention_layer_norm/scale": "post_attention_layernorm.weight",
    "pre_mlp_layer_norm/scale": "pre_feedforward_layernorm.weight",
    "post_mlp_layer_norm/scale": "post_feedforward_layernorm.weight",
}
_TOP = {"token_embedder/embedding": "model.embed_tokens.weight",
        "decoder/decoder_norm/scale": "model.norm.weight",
        "decoder/logits_dense/kernel": "lm_head.weight"}
_LAYER_PATH = re.compile(r"^decoder/layers_(\d+)/(.+)$")
# Buffers some exports carry that hold nothing we need (recomputed from the config).
_IGNORED = re.compile(r"\.rotary_emb\.inv_freq$")


def hf_name(path: str, config: DecoderConfig) -> tuple[str, bool]:
  """Our parameter path → (HF tensor name, whether the array is transposed between them)."""
  if path in _TOP:
    return _TOP[path], path.endswith("kernel")
  m = _LAYER_PATH.match(path)
  table = {**_LAYER, **_LAYER_POST_NORMS} if config.post_norms else _LAYER
  if m and m.group(2) in table:
    return f"model.layers.{m.group(1)}.{table[m.group(2)]}", m.group(2).endswith("kernel")
  raise ValueError(f"No Hugging Face name for parameter {path}.")


def read_config(path: str) -> dict[str, Any]:
  cfg_file = os.path.join(str(path), "config.json")
  if not os.path.isfile(cfg_file):
    raise FileNotFoundError(f"No config.json in {path}; not a Hugging Face checkpoint dir.")
  return C._read_json_file(cfg_file, C._HF_CONFIG_FIX)  # pylint: disable=protected-access


def is_decoder_only_hf(path: str) -> bool:
  """Whether a HF dir's config.json declares a decoder-only model (ours or not): T5 dirs
  go to checkpoints.load_hf, these here (which refuses unsupported types by name)."""
  try:
    hf = read_config(path)
  except (FileNotFoundError, ValueError):
    return False
  return not hf.get("is_encoder_decoder", False) and hf.get("model_type") not in (
      "t5", "mt5", "umt5")


def read_hf_lazy(path: str) -> tuple[dict[str, C.LazyArray], DecoderConfig]:
  """{our param path: LazyArray in our layout} and the config from config.json."""
  path = str(path)
  config = config_from_hf(read_config(path), os.path.join(path, "config.json"))
  tensors = C._hf_tensors(C._hf_files(path))  # pylint: disable=protected-access
  if "model.embed_tokens.weight" not in tensors and "embed_tokens.weight" in tensors:
    # A bare *Model export (no causal-LM head wrapper) has no 'model.' prefix.
    tensors = {f"model.{k}": v for k, v in tensors.items()}
  lazy, used = {}, set()
  for p in C.flatten(DecoderOnlyModel(config).abstract_params()):
    name, transpose = hf_name(p, config)
    if name not in tensors:
      raise ValueError(f"{path}: HF tensor {name} (for parameter {p}) is missing.")
    lazy[p] = C._transposed(tensors[name]) if transpose else tensors[name]  # pylint: disable=protected-access
    used.add(name)
  if config.tie_embeddings:
    used.add("lm_head.weight")  # a tied head saved anyway is the embedding again
  extra = sorted(n for n in tensors if n not in used and not _IGNORED.search(n))
  if extra:
    raise ValueError(f"{path}: unexpected HF tensors {extra[:5]} for {config.family}; the "
                     "checkpoint has parts this config does not describe.")
  return lazy, config


def load_hf_decoder(path: str, dtype="float32",
                    sharding: C.ShardingSpec = None) -> tuple[Params, DecoderConfig]:
  """Imports a HF decoder-only dir → (params in our layout, config)."""
  lazy, config = read_hf_lazy(path)
  return C.materialize(lazy, dtype, sharding), config


def export_hf_decoder(params: Params, config: DecoderConfig, out_dir: str, dtype="float32",
                      max_shard_bytes: int | None = None) -> None:
  """Writes params as a HF directory (config.json + model.safetensors, or shards of at most
  about max_shard_bytes each with model.safetensors.index.json)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  DecoderOnlyModel(config).check_params(params)
  hf = config_to_hf(config)
  dt = C._np_dtype(dtype)  # pylint: disable=protected-access
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for p, x in sorted(C.flatten(params).items()):
    name, transpose = hf_name(p, config)
    x = np.asarray(jax.device_get(x)).astype(dt)
    x = np.ascontiguousarray(x.T if transpose else x)
    if max_shard_bytes and shards[-1] and size + x.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = x
    size += x.nbytes
  os.makedirs(out_dir, exist_ok=True)
  if len(shards) == 1:
    save_file(shards[0], os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, os.path.join(out_dir, file), metadata={"format": "pt"})
      weight_map.update({name: file for name in shard})
    total = sum(x.nbytes for shard in shards for x in shard.values())
    with open(os.path.join(out_dir, C._HF_INDEX), "w") as f:  # pylint: disable=protected-access
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  hf["torch_dtype"] = np.dtype(dt).name
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)


# -----------------------------------------------------------------------------
# Our Orbax format for decoder-only params (orbax_checkpoints.py's layout, DecoderConfig in the
# JSON under INFO_KEY).

def save_decoder_checkpoint(path: str, params: Params, config: DecoderConfig,
                            vocabulary_path: str | None = None, *, force: bool = False,
                            extra_info: Mapping[str, Any] | None = None) -> None:
  """Saves params (Orbax, under path/params) and spec_cascade_checkpoint.json."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  DecoderOnlyModel(config).check_params(params)
  path = os.path.abspath(str(path))
  params_dir = os.path.join(path, C.PARAMS_SUBDIR)
  if os.path.exists(params_dir) and not force:
    raise FileExistsError(f"{params_dir} exists; pass force=True to overwrite it.")
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(params_dir, params, force=force)
    ckptr.wait_until_finished()
  dtypes = {str(np.dtype(x.dtype)) for x in jax.tree_util.tree_leaves(params)}
  info = {"format": C.FORMAT_NAME, "format_version": C.FORMAT_VERSION,
          INFO_KEY: config_to_dict(config), "param_dtypes": sorted(dtypes),
          "vocabulary_path": vocabulary_path, **dict(extra_info or {})}
  if jax.process_index() == 0:
    C._write_text(os.path.join(path, C.INFO_FILE), json.dumps(info, indent=2) + "\n")  # pylint: disable=protected-access


def restore_decoder_checkpoint(path: str, dtype="float32", sharding: C.ShardingSpec = None
                               ) -> tuple[Params, DecoderConfig]:
  """Restores a checkpoint `save_decoder_checkpoint` wrote, each array onto its sharding."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(str(path))
  info_file = os.path.join(path, C.INFO_FILE)
  raw = C._read_bytes(info_file)  # pylint: disable=protected-access
  if raw is None:
    raise FileNotFoundError(f"No {C.INFO_FILE} in {path}; not a spec_cascade checkpoint.")
  info = C._json_object(raw, info_file, C._INFO_FIX)  # pylint: disable=protected-access
  if INFO_KEY not in info:
    raise ValueError(f"{info_file} holds no {INFO_KEY!r}: not a decoder-only checkpoint "
                     "(a T5 one loads with checkpoints.load_params).")
  config = config_from_dict(info[INFO_KEY], where=f"{info_file}: {INFO_KEY}")
  dt = C._np_dtype(dtype)  # pylint: disable=protected-access
  target = C.unflatten({
      p: jax.ShapeDtypeStruct(s.shape, dt, sharding=C._sharding_for(sharding, p, s.shape))  # pylint: disable=protected-access
      for p, s in C.flatten(DecoderOnlyModel(config).abstract_params()).items()})
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(path, C.PARAMS_SUBDIR), target)
  return params, config


# Fields that decide shapes or the function computed (the rest are run-time choices).
_RUNTIME_FIELDS = ("dtype", "matmul_dtype")


def convert_hf_decoder(src: str, dst: str, dtype: str = "float32",
                       config_name: str | None = None, vocabulary: str | None = None,
                       force: bool = False) -> DecoderConfig:
  """HF dir → our checkpoint at dst (params/ + JSON); → the config. With config_name, the
  checkpoint must match that named size (get_decoder_config) in every shape field."""
  params, config = load_hf_decoder(src, dtype)
  if config_name:
    named = get_decoder_config(config_name)
    diffs = [f"{k}: checkpoint {v!r} vs {config_name} {getattr(named, k)!r}"
             for k, v in config_to_dict(config).items()
             if k not in _RUNTIME_FIELDS and config_to_dict(named)[k] != v]
    if diffs:
      raise ValueError(f"{src} is not {config_name}: {'; '.join(diffs)}.")
  found = model_tokenizer.find_tokenizer(src) if vocabulary is None else None
  if found is not None:
    os.makedirs(dst, exist_ok=True)
    # tokenizer.json names its BOS in tokenizer_config.json: it travels along.
    for name in (found.name, "tokenizer_config.json"):
      if os.path.isfile(os.path.join(src, name)):
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    vocabulary = found.name  # relative: resolved against DST when read
  save_decoder_checkpoint(dst, params, config, vocabulary_path=vocabulary, force=force,
                          extra_info={"source": f"hf:{src}"})
  return config


# -----------------------------------------------------------------------------
# What the entry points load: either format, checked against an expected config.

def checkpoint_format(path: str) -> str | None:
  """'orbax' (ours, with a DecoderConfig), 'hf' (a decoder-only HF folder) or None (not a
  decoder-only checkpoint: T5 loaders take it)."""
  path = str(path).rstrip("/")
  raw = C._read_bytes(C._join(path, C.INFO_FILE))  # pylint: disable=protected-access
  if raw is not None:
    try:
      info = C._json_object(raw, path, C._INFO_FIX)  # pylint: disable=protected-access
    except ValueError:
      return None  # damaged: checkpoints.load_params names what is wrong
    return "orbax" if INFO_KEY in info and "t5_config" not in info else None
  if C._looks_hf(path) and is_decoder_only_hf(path):  # pylint: disable=protected-access
    return "hf"
  return None


def load_decoder(path: str, config: DecoderConfig | None = None, dtype="float32",
                 sharding: C.ShardingSpec = None) -> tuple[Params, DecoderConfig]:
  """Loads a decoder-only checkpoint in either format → (params, config).

  config: optional; the checkpoint must agree with it in every field but the run-time ones
  (dtype, matmul_dtype), and it is returned in the stored config's place, so a gin file can
  set the activation dtype. A config of another family (T5Config) is an error.
  """
  fmt = checkpoint_format(path)
  if fmt is None:
    raise ValueError(f"{path} is not a decoder-only checkpoint (ours with a DecoderConfig, or "
                     "a Hugging Face folder of a supported model_type).")
  if config is not None and not isinstance(config, DecoderConfig):
    raise ValueError(f"{path} holds a decoder-only model but the config given for it is a "
                     f"{type(config).__name__}; give a DecoderConfig (configs/models/gemma*/, "
                     "llama/) or none: the checkpoint carries its own.")
  loader = restore_decoder_checkpoint if fmt == "orbax" else load_hf_decoder
  params, stored = loader(path, dtype=dtype, sharding=sharding)
  if config is None:
    return params, stored
  diffs = [f"{k}: checkpoint {v!r} vs given {getattr(config, k)!r}"
           for k, v in config_to_dict(stored).items()
           if k not in _RUNTIME_FIELDS and config_to_dict(config)[k] != v]
  if diffs:
    raise ValueError(f"{path} does not match the config given for it: {'; '.join(diffs)}.")
  return params, config


def tokenizer_path(path: str) -> str | None:
  """The tokenizer of a decoder-only checkpoint: the vocabulary our checkpoint records, else
  a tokenizer.model / tokenizer.json in the folder; None when there is none."""
  path = str(path)
  if checkpoint_format(path) == "orbax":
    raw = C._read_bytes(C._join(path, C.INFO_FILE))  # pylint: disable=protected-access
    info = C._json_object(raw, path, C._INFO_FIX)  # pylint: disable=protected-access
    vocab = info.get("vocabulary_path")
    if isinstance(vocab, str) and vocab:
      return vocab if os.path.isabs(vocab) or "://" in vocab else os.path.join(path, vocab)
  found = model_tokenizer.find_tokenizer(path) if os.path.isdir(path) else None
  return None if found is None else str(found)
