"""Convert a T5X or Hugging Face checkpoint into ours (Orbax + config JSON + gin).

    python -m spec_cascade.convert --from t5x gs://t5-data/pretrained_models/t5x/t5_1_1_small/checkpoint_1000000 \
        --to /ckpt/t5_1_1_small --dtype bfloat16 --config t5_1_1_small \
        --vocabulary gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model
    python -m spec_cascade.convert --from hf /models/flan-t5-small --to /ckpt/flan_t5_small \
        --gin_scope drafter --checkpoint_macro DRAFTER_CHECKPOINT_PATH

DST then holds `params/` (Orbax), `spec_cascade_checkpoint.json` (T5Config,
vocabulary path, source) and `model.gin`, which binds every T5Config field:

    import spec_cascade.models
    DRAFTER_CHECKPOINT_PATH = '/ckpt/flan_t5_small'            # with --checkpoint_macro
    drafter/spec_cascade.models.T5Config.emb_dim = 512          # scope from --gin_scope
    ...

A run includes it and builds the config with `@drafter/spec_cascade.models.T5Config()`.

`--from hf` on a decoder-only directory (config.json model_type llama, gemma, gemma2 or
qwen2) converts it with spec_cascade.hf_decoder and binds DecoderConfig instead (infer and
sweep run such pairs: docs/decoder_only.md).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Sequence

from spec_cascade import checkpoints
from spec_cascade import gin_cli
from spec_cascade import hf_decoder
from spec_cascade.models import T5Config, get_config
from spec_cascade.models import decoder_configs

GIN_FILE = "model.gin"


def gin_model_config(config: T5Config | decoder_configs.DecoderConfig,
                     scope: str | None = None,
                     checkpoint_macro: str | None = None, checkpoint_path: str | None = None,
                     comment: str = "") -> str:
  """Gin text binding every T5Config (or DecoderConfig) field (optionally under `scope/`)."""
  prefix = f"{scope}/" if scope else ""
  lines = [f"# {line}" for line in comment.splitlines()]
  lines += ["import spec_cascade.models", ""]
  if checkpoint_macro:
    lines += [f"{checkpoint_macro} = {checkpoint_path!r}", ""]
  decoder = isinstance(config, decoder_configs.DecoderConfig)
  fields = (decoder_configs.config_to_dict if decoder else checkpoints.config_to_dict)(config)
  for name, value in fields.items():
    if isinstance(value, list):
      value = tuple(value)
    lines.append(f"{prefix}spec_cascade.models.{type(config).__name__}.{name} = {value!r}")
  return "\n".join(lines) + "\n"


def convert(source_format: str, src: str, dst: str, dtype: str = "float32",
            config_name: str | None = None, vocabulary: str | None = None,
            gin_scope: str | None = None, checkpoint_macro: str | None = None,
            force: bool = False) -> T5Config:
  """Reads SRC (T5X or HF), writes our checkpoint and model.gin at DST → config."""
  detected = checkpoints.detect_format(src)
  if detected != source_format:
    raise ValueError(f"--from {source_format} but {src} looks like a {detected} checkpoint.")
  if source_format == "hf" and hf_decoder.is_decoder_only_hf(src):
    config = hf_decoder.convert_hf_decoder(src, dst, dtype, config_name, vocabulary, force)
    _write_gin(config, src, dst, source_format, dtype, gin_scope, checkpoint_macro)
    return config
  config = get_config(config_name) if config_name else None
  loader = checkpoints.load_t5x if source_format == "t5x" else checkpoints.load_hf
  params, config = loader(src, config=config, dtype=dtype)
  if vocabulary is None and source_format == "hf" and os.path.isfile(
      os.path.join(src, "spiece.model")):
    os.makedirs(dst, exist_ok=True)
    shutil.copyfile(os.path.join(src, "spiece.model"), os.path.join(dst, "spiece.model"))
    vocabulary = "spiece.model"  # relative: resolved against DST when read
  checkpoints.save_checkpoint(dst, params, config, vocabulary_path=vocabulary, force=force,
                              extra_info={"source": f"{source_format}:{src}"})
  _write_gin(config, src, dst, source_format, dtype, gin_scope, checkpoint_macro)
  return config


def _write_gin(config, src, dst, source_format, dtype, gin_scope, checkpoint_macro) -> None:
  comment = (f"{type(config).__name__} of the checkpoint at {dst}\n(converted by "
             f"spec_cascade.convert from {source_format} {src}, params {dtype})")
  text = gin_model_config(config, gin_scope, checkpoint_macro, str(dst), comment)
  checkpoints._write_text(checkpoints._join(str(dst), GIN_FILE), text)  # pylint: disable=protected-access


@gin_cli.cli_main
def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m spec_cascade.convert",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--from", dest="source_format", choices=("t5x", "hf"), required=True,
                      help="format of SRC")
  parser.add_argument("src", help="T5X checkpoint (dir, checkpoint_<step>, gs://) or HF dir")
  parser.add_argument("--to", dest="dst", required=True, help="output directory")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="parameter dtype to store")
  parser.add_argument("--config", dest="config_name", default=None,
                      help="named T5 size (e.g. t5_1_1_small) or, for a decoder-only HF "
                           "dir, a named decoder size (e.g. gemma_2b) to check the checkpoint "
                           "against; default: from config.json (HF) or the shapes (T5X)")
  parser.add_argument("--vocabulary", default=None, help="SentencePiece model path to record")
  parser.add_argument("--gin_scope", default=None, help="e.g. drafter or verifier")
  parser.add_argument("--checkpoint_macro", default=None,
                      help="also bind this gin macro to DST, e.g. DRAFTER_CHECKPOINT_PATH")
  parser.add_argument("--force", action="store_true", help="overwrite an existing DST")
  args = parser.parse_args(argv)
  config = convert(args.source_format, args.src, args.dst, args.dtype, args.config_name,
                   args.vocabulary, args.gin_scope, args.checkpoint_macro, args.force)
  print(f"wrote {args.dst} ({config})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
