"""Write ``digits.json`` from scikit-learn's copy of the UCI digits (run once).

Reproduce the shipped file byte for byte (scikit-learn is needed here only, never
at run time)::

    pip install scikit-learn
    python flwr_byz/data/embedded/make_digits.py

Why JSON and not ``.npz``: ``flwr run .`` ships the app as a Flower App Bundle,
which keeps only ``.py``/``.toml``/``.md``/``.yaml``/``.json``/``.jsonl`` files
(``flwr.common.constant.FAB_INCLUDE_PATTERNS``, not overridable), and the bundle's
``flwr_byz`` is the one the app imports. A binary file would be missing there.

Encoding (compact and still text): each sample is one string of 64 base-17 digits
(``0``-``9``, ``a``-``g`` for the pixel counts 0..16, as ``int(c, 17)`` reads
them), the 8x8 grid row-major; ``label`` is one string of 1,797 digits. The
samples are in scikit-learn's order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Base-17 digit of each pixel count 0..16.
ALPHABET = "0123456789abcdefg"

SOURCE = {
    "name": "digits",
    "title": "Optical Recognition of Handwritten Digits (UCI), test set optdigits.tes",
    "creators": "E. Alpaydin, C. Kaynak",
    "year": 1998,
    "url": "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
    "licence": "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)",
    "made-by": "python flwr_byz/data/embedded/make_digits.py "
    "(from sklearn.datasets.load_digits)",
    "encoding": "features: one string per sample, 64 base-17 digits (0-9, a-g = "
    "pixel counts 0..16), 8x8 row-major; label: one digit per sample",
}


def encode(features: np.ndarray, labels: np.ndarray) -> str:
    """The JSON text of ``features`` ``(m, 64)`` (0..16) and ``labels`` ``(m,)``."""
    rows = ["".join(ALPHABET[int(v)] for v in row) for row in features]
    doc = {
        **SOURCE,
        "label": "".join(str(int(v)) for v in labels),
        "features": rows,
    }
    # indent=0: one sample per line (readable, diff-friendly), no indentation bytes.
    return json.dumps(doc, indent=0) + "\n"


def main() -> None:
    """Export ``sklearn.datasets.load_digits()`` next to this script."""
    from sklearn.datasets import load_digits  # only for this one-off export

    digits = load_digits()
    x = digits.data
    # The pixels are counts 0..16 stored as float64: the encoding loses nothing.
    if not (np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 16):
        raise SystemExit("unexpected pixel values: not integers in 0..16")
    out = Path(__file__).with_name("digits.json")
    out.write_text(encode(x.astype(np.uint8), digits.target), encoding="ascii")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
