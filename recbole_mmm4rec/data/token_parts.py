"""Resume points of the token encoders (``feature_extraction/encode_text.py --tokens``, ``encode_clip.py``).

An encoder writes the items it has finished as small, validated token files in ``<path>.parts/``; a run
started again skips them, and the full ``<dataset>.tokens.npz`` is assembled from the parts at the end.
"""

import json
import os
import shutil
from typing import Callable, Mapping, Sequence

import numpy as np

from recbole_mmm4rec.data.tokens import TOKENS_SUFFIX, read_tokens, write_tokens


class TokenParts:
    """Resume points of an encoder: finished items saved as small token files in ``<path>.parts/``.

    Each part is written with :func:`write_tokens` (validated, atomic), so an interrupted run
    loses at most the part in progress. ``signature`` (encoder, cap, ...) is stored beside the
    parts; parts of a run with another signature are discarded.
    """

    def __init__(self, path: str, signature: Mapping, log: Callable = print):
        self.folder = os.fspath(path) + ".parts"
        self.signature = json.loads(json.dumps(dict(signature)))  # as it reads back
        signature_file = os.path.join(self.folder, "signature.json")
        if os.path.isdir(self.folder):
            try:
                with open(signature_file, encoding="utf-8") as handle:
                    same = json.load(handle) == self.signature
            except (OSError, ValueError):
                same = False
            if not same:
                log(f"discarding {self.folder}: written by another encoder or cap")
                self.remove()
        if not os.path.isdir(self.folder):
            os.makedirs(self.folder)
            with open(signature_file, "w", encoding="utf-8") as handle:
                json.dump(self.signature, handle)
        self.parts = [read_tokens(os.path.join(self.folder, name))
                      for name in sorted(os.listdir(self.folder)) if name.endswith(TOKENS_SUFFIX)]

    def done(self) -> set:
        """Item tokens already encoded."""
        return {str(t) for part in self.parts for t in part.tokens}

    def save(self, tokens: Sequence[str], states: Mapping[str, np.ndarray], lengths: Mapping[str, np.ndarray]) -> None:
        """Write the next part (same modalities and shapes in every part)."""
        path = os.path.join(self.folder, f"part-{len(self.parts):05d}{TOKENS_SUFFIX}")
        write_tokens(path, tokens, states, lengths)
        self.parts.append(read_tokens(path))

    def assemble(self, tokens: Sequence[str]) -> tuple:
        """``(states, lengths)`` of all parts, rows in the order of ``tokens`` (every one must be done)."""
        where = {str(t): (p, r) for p, part in enumerate(self.parts) for r, t in enumerate(part.tokens)}
        order = [where[str(t)] for t in tokens]
        states, lengths = {}, {}
        for modality in self.parts[0].modalities:
            states[modality] = np.stack([self.parts[p].states[modality][r] for p, r in order])
            lengths[modality] = np.array([self.parts[p].lengths[modality][r] for p, r in order])
        return states, lengths

    def remove(self) -> None:
        """Delete the parts (after the full file is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
