"""The pair's models from checkpoints: one `Bundle(model, params)` per path, T5 or
decoder-only, in whichever format it was saved (a trainer MODEL_DIR or export, our checkpoint,
T5X, Hugging Face), and the checks a pair must pass before it decodes together."""
from __future__ import annotations

from typing import Any, Sequence

from spec_cascade import decoding
from spec_cascade.orbax_checkpoints import resolve_checkpoint_dir
from spec_cascade.decoding import Bundle
from spec_cascade.models import cpu_kernels

def load_bundle(path: str, config=None, dtype: str = "float32",
                activation_dtype: str | None = None, matmul_dtype: str | None = None,
                stream_weights: bool = True) -> Bundle:
  """Loads a model: a trainer MODEL_DIR / export, one of our checkpoints, T5X or Hugging Face;
  T5 or decoder-only (our checkpoint with a DecoderConfig, or a Llama / Gemma / Gemma 2 /
  Qwen2 Hugging Face folder: `hf_decoder.load_decoder`).

  config: optional T5Config or DecoderConfig, checked against the checkpoint's own and used in
  its place (needed only where a T5 checkpoint lacks one and shapes cannot tell).
  dtype: parameter dtype ('float32' on CPU; 'bfloat16' as T5X restores for inference).
  activation_dtype: overrides the config's activation dtype.
  matmul_dtype: overrides the config's matmul input dtype (T5Config.matmul_dtype; 'bfloat16'
  runs a bfloat16 checkpoint's matmuls faster on CPUs with AMX / AVX512-BF16).
  stream_weights: on a CPU with the few-row kernel, give the dense kernels that bfloat16 holds
  exactly a bfloat16 twin for products of few rows (`cpu_kernels.stream_params`: half the
  weight traffic at batch 1, same values; SPEC_CASCADE_STREAMED_WEIGHTS=0 turns it off).
  """
  if not path:
    raise ValueError("a checkpoint path is empty; set DRAFTER_CHECKPOINT_PATH / "
                     "VERIFIER_CHECKPOINT_PATH.")
  from spec_cascade import checkpoints  # pylint: disable=g-import-not-at-top
  from spec_cascade import hf_decoder  # pylint: disable=g-import-not-at-top
  path = resolve_checkpoint_dir(str(path))
  if hf_decoder.checkpoint_format(path) is not None:
    params, cfg = hf_decoder.load_decoder(path, config=config, dtype=dtype)
  else:
    params, cfg = checkpoints.load_params(path, config=config, dtype=dtype)
  if activation_dtype:
    cfg = cfg.replace(dtype=activation_dtype)
  if matmul_dtype:
    cfg = cfg.replace(matmul_dtype=matmul_dtype)
  if stream_weights:
    params = cpu_kernels.stream_params(params, cfg.matmul_dtype)
  return Bundle(decoding.contract.model_for(cfg), params)


def check_pair(drafter: Bundle | None, verifier: Bundle | None, tokenizer=None) -> None:
  """Refuses pairs with different vocabularies or EOS ids, and tokenizers larger than the
  models' vocab."""
  from spec_cascade import checkpoints  # pylint: disable=g-import-not-at-top
  if drafter is not None and verifier is not None:
    checkpoints.check_same_vocabulary(drafter.model.config, verifier.model.config)
    decoding.eos_id_of(drafter, verifier)
  if tokenizer is not None:
    for name, b in (("drafter", drafter), ("verifier", verifier)):
      if b is not None and tokenizer.vocab_size > b.model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the {name} only "
            f"{b.model.config.vocab_size}: the model was trained with another vocabulary. "
            "Set vocabulary_path to the SentencePiece model the pair was trained with.")


def load_models(drafter_checkpoint: str | None, verifier_checkpoint: str | None,
                methods: Sequence[Any], dtype: str = "float32",
                activation_dtype: str | None = None, drafter_config=None, verifier_config=None,
                matmul_dtype: str | None = None) -> tuple[Bundle | None, Bundle | None]:
  """Loads the models the methods need (the drafter is not needed for 'verifier' alone, etc.);
  methods: `infer.MethodSpec`s (anything with `.name` and the catalogue's `.method`)."""
  need_d = any(m.method.uses_drafter for m in methods)
  need_v = any(m.method.uses_verifier for m in methods)
  for need, path, macro in ((need_d, drafter_checkpoint, "DRAFTER_CHECKPOINT_PATH"),
                            (need_v, verifier_checkpoint, "VERIFIER_CHECKPOINT_PATH")):
    if need and not path:
      raise ValueError(f"methods {[m.name for m in methods]} need {macro}; it is not set.")
  drafter = (load_bundle(drafter_checkpoint, drafter_config, dtype, activation_dtype,
                         matmul_dtype) if need_d else None)
  verifier = (load_bundle(verifier_checkpoint, verifier_config, dtype, activation_dtype,
                          matmul_dtype) if need_v else None)
  check_pair(drafter, verifier)
  return drafter, verifier
