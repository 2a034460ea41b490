"""Reading lmms-eval task documents without decoding their media.

A record keeps the document's plain columns as ground truth for rescoring; a broken image
must fail its own sample with a message that says what is wrong with it, which PIL's error
at ``datasets``' decoding does not (it names an in-memory object).
"""
from __future__ import annotations

import datasets
from datasets.features.features import require_decoding

from collab_eval.edge import BadImage, sanitize


def without_media(docs):
    """The documents' plain columns, readable without decoding media (which may be broken):
    every column whose feature needs decoding at any depth (an image, a list of images, a
    struct holding audio) goes."""
    if not isinstance(docs, datasets.Dataset):
        return docs
    media = {name for name, feature in docs.features.items() if require_decoding(feature)}
    return docs.select_columns([name for name in docs.column_names if name not in media])


def media_problem(docs, doc_id) -> str | None:
    """Why the row's image cannot be used, in the edge's words, read from its undecoded bytes.
    None when every image of the row is fine."""
    if not isinstance(docs, datasets.Dataset):
        return None
    for name, feature in docs.features.items():
        if isinstance(feature, datasets.Image):
            raw = docs.cast_column(name, datasets.Image(decode=False))[doc_id][name]
            try:
                if raw is not None:
                    sanitize(raw)
            except BadImage as err:
                return str(err)
    return None
