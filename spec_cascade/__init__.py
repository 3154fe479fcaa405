"""spec_cascade: speculative cascades for T5 drafter/verifier pairs in JAX/Flax."""

__version__ = "0.1.0"
