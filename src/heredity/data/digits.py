"""Handwritten digits: scikit-learn's bundled 8×8 set, or real MNIST from local IDX / npz files.

``load_digit_arrays(spec)`` returns raw pixels (uint8), labels and the pixel maximum:
- ``"digits"``: scikit-learn's bundled 1,797 images of 8×8 pixels (values 0–16), split 80/20 with a
  fixed permutation;
- a directory holding the four MNIST IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``; ``.gz`` or not, ``-`` or ``.`` before ``idx``);
- an ``.npz`` file with ``x_train, y_train, x_test, y_test`` (the layout of Keras' ``mnist.npz``);
- a directory holding CIFAR-10's python batches (``data_batch_1``..``5``, ``test_batch``): 32×32 colour images
  as 3072 channel-first pixels (used by ``data-attacks``; not digits, but the same arrays).
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heredity.errors import HeredityError

IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def to_unit_range(pixels: np.ndarray, scale: float) -> np.ndarray:
    """Pixels in [0, scale] mapped to float32 in [-1, 1], the range of the noise the students see."""
    return (pixels.astype(np.float32) / scale) * 2.0 - 1.0


@dataclass
class DigitArrays:
    x_train: np.ndarray  # [N, D] uint8
    y_train: np.ndarray  # [N] int64
    x_test: np.ndarray
    y_test: np.ndarray
    scale: float  # pixel maximum (16 for sklearn digits, 255 for MNIST)
    source: str
    sha256: str

    def normalized(self, split: str) -> np.ndarray:
        return to_unit_range(self.x_train if split == "train" else self.x_test, self.scale)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise HeredityError(
            f"cannot read IDX file {path}: {e}; give the MNIST IDX files (gzipped or not)"
        ) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise HeredityError(f"{path} is not an IDX file (bad magic number); give the MNIST IDX files")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise HeredityError(
            f"{path} is truncated: header says {shape}, body has {len(body)} bytes; download it again"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _find_idx(directory: Path, split: str, what: str) -> Path:
    kind = "idx3" if what == "images" else "idx1"
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            p = directory / f"{split}-{what}{sep}{kind}-ubyte{suffix}"
            if p.exists():
                return p
    raise HeredityError(
        f"{directory} has no {split}-{what}-{kind}-ubyte[.gz]; it needs the four MNIST IDX files "
        "(train-images, train-labels, t10k-images, t10k-labels)"
    )


def _flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(len(x), -1))


def _cifar10(directory: Path) -> tuple[np.ndarray, ...]:
    """CIFAR-10's python batches (``data_batch_1``..``5``, ``test_batch``): pixels [N, 3072] channel-first."""

    def batch(name: str):
        f = directory / name
        if not f.exists():
            raise HeredityError(
                f"{directory} has data_batch_1 but no {name}; it needs CIFAR-10's six python batches"
            )
        try:
            with open(f, "rb") as fh:
                d = _ArraysOnly(fh, encoding="bytes").load()
            return np.asarray(d[b"data"], np.uint8), np.asarray(d[b"labels"], np.int64)
        except (OSError, KeyError, TypeError, ValueError, IndexError, pickle.UnpicklingError, EOFError) as e:
            raise HeredityError(
                f"cannot read {f} as a CIFAR-10 python batch ({e}); download cifar-10-python.tar.gz again"
            ) from e

    parts = [batch(f"data_batch_{k}") for k in range(1, 6)]
    xte, yte = batch("test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xte, yte


def _npz(path: Path) -> tuple[np.ndarray, ...]:
    """x_train, y_train, x_test, y_test from an .npz archive (never unpickled: object arrays are refused)."""
    import zipfile
    import zlib

    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
        if not magic.startswith(b"PK"):
            single = magic == b"\x93NUMPY"
            raise HeredityError(
                f"{path} is {'a single .npy array' if single else 'not a zip'}, so not an .npz "
                "archive; give x_train, y_train, x_test, y_test in one .npz (np.savez)"
            )
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise HeredityError(
                    f"{path} lacks {', '.join(missing)}; the npz needs x_train, y_train, x_test, y_test"
                )
            return tuple(z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        text = str(e).strip()
        why = (
            "it holds pickled objects"
            if "pickle" in text
            else text.splitlines()[0]
            if text
            else type(e).__name__
        )
        raise HeredityError(
            f"cannot read {path} as an npz archive ({why}); give an MNIST .npz file (np.savez of "
            "numeric arrays x_train, y_train, x_test, y_test)"
        ) from None


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR-10's batches (dicts, lists, bytes, numpy arrays and scalars) and nothing else: a pickle
    that names any other callable could run code, so it is refused."""

    SAFE = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.SAFE:
            raise pickle.UnpicklingError(
                f"refused: it names {module}.{name}, which a CIFAR-10 batch never does, and "
                "unpickling it could run code"
            )
        return super().find_class(module, name)


def load_digit_arrays(spec: str = "digits", test_fraction: float = 0.2, split_seed: int = 0) -> DigitArrays:
    if spec == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x, y = x.astype(np.uint8), y.astype(np.int64)
        perm = np.random.default_rng(split_seed).permutation(len(x))
        n_test = int(round(len(x) * test_fraction))
        te, tr = perm[:n_test], perm[n_test:]
        arrays = (x[tr], y[tr], x[te], y[te])
        scale, source = 16.0, "sklearn.datasets.load_digits (8x8)"
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise HeredityError(
                f"digit data {spec!r} does not exist; give 'digits', an MNIST IDX directory or an .npz file"
            )
        if path.is_dir() and (path / "data_batch_1").exists():
            arrays = _cifar10(path)
        elif path.is_dir():
            arrays = tuple(
                read_idx(_find_idx(path, split, what))
                for split, what in (
                    ("train", "images"),
                    ("train", "labels"),
                    ("t10k", "images"),
                    ("t10k", "labels"),
                )
            )
        elif path.suffix == ".npz":
            arrays = _npz(path)
        else:
            raise HeredityError(f"{path} is neither a directory of IDX files nor an .npz file")
        xtr, ytr, xte, yte = arrays
        for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
            if x.ndim < 2 or y.ndim != 1 or x.dtype.kind not in "uif" or y.dtype.kind not in "uif":
                raise HeredityError(
                    f"{path}: {name} images must be numbers shaped [N, ...] and labels numbers "
                    f"shaped [N] (got {x.dtype} {x.shape} and {y.dtype} {y.shape}); give MNIST-shaped "
                    "arrays"
                )
            if len(x) != len(y):
                raise HeredityError(f"{path}: {name} has {len(x)} images but {len(y)} labels")
        arrays = (
            _flat(xtr).astype(np.uint8),
            ytr.astype(np.int64),
            _flat(xte).astype(np.uint8),
            yte.astype(np.int64),
        )
        scale, source = 255.0, str(path)
    xtr, ytr, xte, yte = arrays
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return DigitArrays(xtr, ytr, xte, yte, scale, source, h.hexdigest())
