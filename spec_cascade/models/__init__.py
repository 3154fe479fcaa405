"""T5 models in T5X's parameter layout."""
from spec_cascade.models.configs import NAMED_CONFIGS, T5Config, get_config
from spec_cascade.models.t5 import DecoderCache, T5Model, shift_right

__all__ = ["NAMED_CONFIGS", "T5Config", "get_config", "DecoderCache", "T5Model", "shift_right"]
