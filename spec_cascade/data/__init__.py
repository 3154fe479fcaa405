"""Data: seqio tasks (paper + offline), offline corpus builders, vocabulary.

Submodules: `offline` (corpora, pure Python), `vocab` (SentencePiece),
`tasks` (seqio registration; imports TensorFlow), `parsers`, `raw`.
Importing this package imports neither seqio nor TensorFlow.
"""
