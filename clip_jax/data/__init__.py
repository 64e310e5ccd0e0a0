"""Data: sources, tokenizers, preprocessing and the per-host training stream.

    from clip_jax.data import (make_tokenizer, make_train_iterator, load_eval_split, EvalSet,
                               train_batch_spec, load_tokenizer)
    spec = train_batch_spec(config)  # {"image": ShapeDtypeStruct [B, H, W, 3] float32, ...}
    tokenizer = make_tokenizer(config.data)
    it = make_train_iterator(config, tokenizer, jax.process_index(), jax.process_count())
    batch = next(it)  # {"image": f32 [b, H, W, 3], "text": i32 [b, max_len]}; built ahead
    state = it.get_state(); it.set_state(state)
    it.close()  # stops the background threads
    eval_set = load_eval_split(config.data, split="heldout")  # images normalised as `batch`
    clip = load_tokenizer("clip_bpe", context_length=77)  # no config: CLIP's BPE, as open_clip

Sources ("emoji", "fashion_mnist", "synthetic", the users' own files: "csv", "webdataset",
"image_folder", and TFDS datasets: "tfds") register in `SOURCES`; `config.data.name` selects one. Tokenizers ("bpe",
"bytes", "clip_bpe", "sentencepiece", "siglip", "tokenizer_json") register in `TOKENIZERS`;
`config.data.tokenizer.name` selects one.
Images are float32 in [-1, 1] unless `config.data.preprocess.normalize` says otherwise
(`clip_jax.data.preprocess`, which also does the random resized crop and flip).
"""

from clip_jax.data import emoji  # noqa: F401  (registers "emoji")
from clip_jax.data import fashion_mnist  # noqa: F401  (registers "fashion_mnist")
from clip_jax.data import image_folder  # noqa: F401  (registers "image_folder")
from clip_jax.data import spm_tokenizer  # noqa: F401  (registers "sentencepiece", "siglip")
from clip_jax.data import synthetic  # noqa: F401  (registers "synthetic")
from clip_jax.data import table  # noqa: F401  (registers "csv")
from clip_jax.data import tfds_source  # noqa: F401  (registers "tfds")
from clip_jax.data import tokenizer_json  # noqa: F401  (registers "tokenizer_json")
from clip_jax.data import webdataset  # noqa: F401  (registers "webdataset")
from clip_jax.data.cache import DataDownloadError, resolve_cache_dir
from clip_jax.data.pipeline import (TrainIterator, load_eval_split, make_train_iterator,
                                    train_batch_spec)
from clip_jax.data.registry import SOURCES, DataSource, EvalSet, build_source
from clip_jax.data.tokenizer import TOKENIZERS, Tokenizer, load_tokenizer, make_tokenizer

__all__ = [
    "DataDownloadError", "DataSource", "EvalSet", "SOURCES", "TOKENIZERS", "Tokenizer",
    "TrainIterator", "build_source", "load_eval_split", "load_tokenizer", "make_tokenizer",
    "make_train_iterator", "resolve_cache_dir", "train_batch_spec",
]
