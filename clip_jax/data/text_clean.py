"""Caption cleaning before tokenisation: the modes open_clip's tokenizers offer, by name.

`config.data.tokenizer.clean` of the "sentencepiece" and "tokenizer_json" tokenizers picks one
("clip_bpe" always cleans with "lower", as CLIP does; "siglip" with "siglip"):

* "none": the text as given (a `tokenizer.json` may still normalise it itself, e.g. BERT's
  lowercasing).
* "whitespace": mojibake repaired (`ftfy.fix_text`), HTML entities unescaped twice ("&amp;amp;"
  -> "&"), every whitespace run made one space, the ends trimmed.
* "lower": "whitespace", then lowercased (CLIP's own cleaning).
* "canonicalize": "whitespace", then ASCII punctuation (`string.punctuation`) removed, lowercased
  and whitespace runs made one space again (the canonical form of the "Learning Transferable
  Visual Models" text-deduplication recipe, as open_clip's `canonicalize` option).
* "siglip": Hugging Face `SiglipTokenizer`'s canonical form (big_vision's): lowercased, ASCII
  punctuation removed, whitespace runs made one space, the ends trimmed; no mojibake repair or
  HTML unescaping ("&amp;" becomes "amp").
"""

from __future__ import annotations

import html
import string

import ftfy

CLEAN_MODES = ("none", "whitespace", "lower", "canonicalize", "siglip")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_text(text: str, mode: str) -> str:
  """`text` cleaned by `mode`, one of `CLEAN_MODES` (see the module docstring).

  Raises:
    ValueError: an unknown mode.
  """
  if mode == "none":
    return text
  if mode == "siglip":
    return " ".join(text.lower().translate(_PUNCTUATION).split())
  if mode not in CLEAN_MODES:
    raise ValueError(f"unknown text cleaning mode {mode!r}; choose one of {CLEAN_MODES}")
  text = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split())
  if mode == "lower":
    return text.lower()
  if mode == "canonicalize":
    return " ".join(text.translate(_PUNCTUATION).lower().split())
  return text
