"""spec_cascade: speculative cascades (Narasimhan et al., ICLR 2025) for T5 in JAX/Flax."""

__version__ = "0.1.0"
