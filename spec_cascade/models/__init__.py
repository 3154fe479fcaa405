"""T5 models in T5X's parameter layout, and decoder-only ones (Llama, Gemma, Gemma 2, Qwen2)."""
from spec_cascade.models.configs import NAMED_CONFIGS, T5Config, get_config
from spec_cascade.models.decoder_configs import (NAMED_DECODER_CONFIGS, DecoderConfig,
                                                 get_decoder_config)
from spec_cascade.models.decoder_only import DecoderOnlyModel, KVCache
from spec_cascade.models.t5 import DecoderCache, T5Model, shift_right

__all__ = ["NAMED_CONFIGS", "T5Config", "get_config", "DecoderCache", "T5Model", "shift_right",
           "NAMED_DECODER_CONFIGS", "DecoderConfig", "get_decoder_config", "DecoderOnlyModel",
           "KVCache"]
