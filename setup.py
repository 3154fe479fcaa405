"""spec_cascade: speculative cascades for T5 in JAX/Flax."""
import pathlib

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

_HERE = pathlib.Path(__file__).parent


class _BuildWithConfigs(build_py):
  """Copies the top-level configs/ into the built package as spec_cascade/configs/.

  Users edit the gin files in configs/; an installed wheel carries them where gin_cli looks when
  there is no checkout around it. A copy at build time (rather than a package_dir mapping) keeps
  an editable install a plain path entry, which setuptools installs without warnings."""

  def run(self):
    super().run()
    for src in sorted((_HERE / "configs").rglob("*.gin")):
      dest = pathlib.Path(self.build_lib) / "spec_cascade" / "configs" / src.relative_to(
          _HERE / "configs")
      self.mkpath(str(dest.parent))
      self.copy_file(str(src), str(dest))

setup(
    name="spec_cascade",
    version="0.1.0",
    description=("Speculative cascades (Narasimhan et al., ICLR 2025) for T5 "
                 "drafter/verifier pairs in JAX/Flax, T5X-style."),
    long_description=(_HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # Data go in through package_data only (no include_package_data): setuptools would otherwise
    # warn for every data folder that is not listed as a package. configs/: _BuildWithConfigs.
    packages=find_packages(include=["spec_cascade", "spec_cascade.*"]),
    package_data={"spec_cascade": ["assets/**/*", "models/kernels/*.cc"]},
    cmdclass={"build_py": _BuildWithConfigs},
    install_requires=[
        # Ranges admit the set known to install together on Python 3.11
        # (jax 0.10.x, flax 0.12.8, numpy 2.4) and the newest on 3.12.
        "jax>=0.10.2,<0.13",
        "jaxlib>=0.10.2,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "gin-config>=0.5.0,<0.6",
        "numpy>=2.0,<2.6",
        "ml-dtypes>=0.5",
        "msgpack>=1.0",
        "tensorstore>=0.1.86",
        "safetensors>=0.4",
        "absl-py>=2.0",
        "tqdm>=4.60",
        "seqio>=0.0.20",
        "tensorflow>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "tensorflow-datasets>=4.9.10",
        "sentencepiece>=0.2.0",
        "sacrebleu>=2.4",
        "rouge-score>=0.1.2",
        "matplotlib>=3.8",
        # TensorBoard summaries of training (clu.metric_writers, as T5X writes them).
        "clu>=0.0.12",
        "tensorboard>=2.21,<2.22",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5"],
        # Side-by-side checks against Hugging Face transformers (optional).
        "parity": ["torch>=2.13,<2.15", "transformers>=5.0"],
    },
)
