"""A fast patch tokenizer: each patch of a small copy of the frame becomes the id of its nearest codeword.

The frame is shrunk to a working size (128x96 by default) with area averaging, cut into non-overlapping patches
(8x8 -> a 12x16 grid), and every patch is matched against the codebook with one matrix product. A 640x480 frame
costs well under a millisecond, so the camera stream can be tokenized at full rate on the robot.

Patches are matched as they are, not mean-removed: at this scale an 8x8 patch covers 40x40 pixels of a VGA frame and
most of its content is its colour and brightness. A mean-removed (shape-only) code would need a second token per
patch for the mean, and words such as "bright flat blue" could not be read from one id.

The codebook is trained by ``edge_lam.prepare.codebook`` on real photos; this module only loads and applies it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from edge_lam.encoders.image import shrink
from edge_lam.encoders.tokens import Encoded, EncoderInputError, Vocabulary

__all__ = ["PatchCodebook", "PatchTokenizer", "frame_patches", "load_codebook"]

ENCODER_NAME = "patch-vq"


@dataclasses.dataclass(frozen=True)
class PatchCodebook:
    """Codewords and the patch geometry they were trained for (they only make sense together).

    ``centroids`` is [codes, patch*patch*3] float32 in 0..255 pixel units, each row an RGB patch in row-major
    (row, column, channel) order; ``words[i]`` describes code ``i`` for a language model.
    """

    centroids: np.ndarray
    patch: int
    width: int
    height: int
    version: str
    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.width % self.patch or self.height % self.patch:
            raise ValueError(f"working size {self.width}x{self.height} is not a whole number of {self.patch} patches")
        if self.centroids.ndim != 2 or self.centroids.shape[1] != self.patch * self.patch * 3:
            raise ValueError(f"centroids {self.centroids.shape} do not hold {self.patch}x{self.patch}x3 patches")
        if len(self.words) != self.centroids.shape[0]:
            raise ValueError(f"{len(self.words)} words for {self.centroids.shape[0]} codes")

    @property
    def size(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of patches in one frame."""
        return self.height // self.patch, self.width // self.patch

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as file:  # a file object, so numpy does not append ".npz" to the name
            np.savez(
                file, centroids=self.centroids.astype(np.float32), patch=self.patch, width=self.width,
                height=self.height, version=self.version, words=np.array(self.words),
            )


def load_codebook(path: str | os.PathLike) -> PatchCodebook:
    """Read a codebook saved by ``PatchCodebook.save`` (``python -m edge_lam.prepare.codebook``)."""
    with np.load(pathlib.Path(path), allow_pickle=False) as data:
        return PatchCodebook(
            centroids=np.ascontiguousarray(data["centroids"], dtype=np.float32),
            patch=int(data["patch"]), width=int(data["width"]), height=int(data["height"]),
            version=str(data["version"]), words=tuple(str(w) for w in data["words"]),
        )


def frame_patches(frame: np.ndarray, width: int, height: int, patch: int) -> np.ndarray:
    """Shrink an HxWx3 uint8 frame to ``width`` x ``height`` and return its patches as [rows*cols, patch*patch*3].

    Area averaging is the right filter for shrinking (no aliasing) and is fast for the integer ratios of common
    camera sizes. The training code calls this too, so the codebook learns exactly what the tokenizer sees.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise EncoderInputError(f"expected an HxWx3 uint8 frame, got {frame.dtype} {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise EncoderInputError(f"empty frame {frame.shape}")
    small = shrink(frame, width, height)
    rows, cols = height // patch, width // patch
    blocks = small.reshape(rows, patch, cols, patch, 3).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(rows * cols, patch * patch * 3)


class PatchTokenizer:
    """Turns frames into a grid of codeword ids (and back into a coarse picture, to see what the ids keep)."""

    def __init__(self, codebook: PatchCodebook) -> None:
        self.codebook = codebook
        # Stored transposed and with -2 folded in, so encoding is one matmul plus one add; ||x||^2 is the same for
        # every code of a patch and is left out of the argmin.
        self._minus_two_ct = np.ascontiguousarray(-2.0 * codebook.centroids.T, dtype=np.float32)
        self._c_sq = np.einsum("ij,ij->i", codebook.centroids, codebook.centroids).astype(np.float32)
        self._vocabulary = Vocabulary(ENCODER_NAME, codebook.version, codebook.words)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PatchTokenizer:
        return cls(load_codebook(path))

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the token grid; the ids of ``encode`` are in this shape, row-major."""
        return self.codebook.grid

    @property
    def vocabulary(self) -> Vocabulary:
        return self._vocabulary

    def encode(self, frame: np.ndarray) -> Encoded:
        """Tokenize one HxWx3 uint8 RGB frame of any size (it is stretched to the working size)."""
        book = self.codebook
        patches = frame_patches(frame, book.width, book.height, book.patch).astype(np.float32)
        scores = patches @ self._minus_two_ct
        scores += self._c_sq
        return Encoded(ids=scores.argmin(axis=1), shape=book.grid)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The working-size RGB picture the ids stand for: each patch replaced by its codeword."""
        book = self.codebook
        rows, cols = book.grid
        ids = np.asarray(ids).reshape(-1)
        if ids.size != rows * cols:
            raise ValueError(f"{ids.size} ids do not fill a {rows}x{cols} grid")
        blocks = book.centroids[ids].reshape(rows, cols, book.patch, book.patch, 3).transpose(0, 2, 1, 3, 4)
        return np.clip(np.rint(blocks.reshape(book.height, book.width, 3)), 0, 255).astype(np.uint8)
