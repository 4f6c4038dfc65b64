"""Train the patch tokenizer's codebook: seeded k-means over patches of real photos, in plain numpy.

Run by setup (``edge-lam prepare``) on scikit-image's photos, or by hand::

    python -m edge_lam.prepare.codebook --out codebook.npz [--photos DIR] [--codes 256]

Every photo is seen the way the tokenizer sees a camera frame (``patches.frame_patches``): whole, as 4:3 crops at
a few zooms and offsets, and mirrored, so the codes cover the scales and positions a moving camera produces. The
photos are mostly gray or warm-coloured, so colour photos are also used with their hues turned by a third and two
thirds of the circle: without that no code would be green or blue, colours a robot sees all day. Each code also gets
a short word (brightness, texture, colour) that a language model can read.
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import os
import pathlib
import sys
from collections.abc import Sequence

import cv2
import numpy as np

from edge_lam.encoders.patches import PatchCodebook, frame_patches

__all__ = ["describe_code", "hue_turned", "kmeans", "photo_paths", "train_codebook", "training_patches"]

FORMAT_VERSION = 1
# At most this many patches go into k-means (a seeded sample), which bounds setup time whatever the photos.
MAX_PATCHES = 40_000
# Luma below DARK is "dark", above BRIGHT "bright"; chroma (max - min of the mean RGB) below GRAY_CHROMA is "gray".
DARK, BRIGHT, GRAY_CHROMA = 85.0, 170.0, 24.0
# Luma standard deviation inside a code below FLAT is "flat"; an edge is one gradient direction this many times
# stronger than the other.
FLAT, EDGE_RATIO = 8.0, 2.0
# Hue upper bounds in degrees, red wrapping around 360.
HUES = ((15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"), (260, "blue"), (330, "purple"),
        (360, "red"))


def training_patches(photos: Sequence[np.ndarray], width: int, height: int, patch: int) -> np.ndarray:
    """Patches of every photo seen whole and as 4:3 crops (3 zooms x 3 offsets), plus their mirror images."""
    views: list[np.ndarray] = []
    for photo in photos:
        rows, cols = photo.shape[:2]
        full_w = min(cols, rows * width / height)
        views.append(photo)
        for zoom in (1.0, 0.7, 0.5):
            win_w, win_h = int(full_w * zoom), int(full_w * zoom * height / width)
            for fx, fy in ((0.0, 0.0), (0.5, 0.5), (1.0, 1.0)):
                x0, y0 = int((cols - win_w) * fx), int((rows - win_h) * fy)
                views.append(photo[y0:y0 + win_h, x0:x0 + win_w])
    views += [view[:, ::-1] for view in views]
    return np.concatenate([frame_patches(np.ascontiguousarray(v), width, height, patch) for v in views])


def hue_turned(photo: np.ndarray) -> list[np.ndarray]:
    """The photo and, if it has colour, copies with its hues turned by 120 and 240 degrees."""
    if np.array_equal(photo[..., 0], photo[..., 1]) and np.array_equal(photo[..., 1], photo[..., 2]):
        return [photo]
    hsv = cv2.cvtColor(photo, cv2.COLOR_RGB2HSV)  # OpenCV's 8-bit hue runs 0..179
    turned = []
    for shift in (60, 120):
        copy = hsv.copy()
        copy[..., 0] = (copy[..., 0].astype(np.int16) + shift) % 180
        turned.append(cv2.cvtColor(copy, cv2.COLOR_HSV2RGB))
    return [photo, *turned]


def kmeans(points: np.ndarray, codes: int, iterations: int, seed: int) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; deterministic for a given seed. Returns [codes, dim] float32.

    Distances use ||x||^2 - 2 x.c + ||c||^2 so each iteration is one matrix product. A code left empty is moved to
    the point worst served by the others, so none is wasted.
    """
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(points, dtype=np.float32)
    x_sq = np.einsum("ij,ij->i", x, x)
    centroids = np.empty((codes, x.shape[1]), np.float32)
    centroids[0] = x[rng.integers(len(x))]
    nearest = np.maximum(x_sq - 2.0 * (x @ centroids[0]) + centroids[0] @ centroids[0], 0.0)
    for k in range(1, codes):
        # float64 for the cumulative sum: float32 would lose the small weights next to a large total.
        weights = nearest.astype(np.float64)
        centroids[k] = x[np.searchsorted(np.cumsum(weights), rng.random() * weights.sum())]
        nearest = np.minimum(nearest, np.maximum(x_sq - 2.0 * (x @ centroids[k]) + centroids[k] @ centroids[k], 0.0))
    for _ in range(iterations):
        distances = x @ (-2.0 * centroids.T)
        distances += np.einsum("ij,ij->i", centroids, centroids)
        assignment = distances.argmin(axis=1)
        counts = np.bincount(assignment, minlength=codes)
        # Summing sorted runs with reduceat is far faster than np.add.at; float64 keeps the sums exact enough.
        order = np.argsort(assignment, kind="stable")
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        sums = np.zeros((codes, x.shape[1]), np.float64)
        filled = counts > 0
        sums[filled] = np.add.reduceat(x[order].astype(np.float64), starts[filled], axis=0)
        served = distances[np.arange(len(x)), assignment] + x_sq
        for k in np.flatnonzero(counts == 0):
            worst = int(served.argmax())
            sums[k], counts[k], served[worst] = x[worst], 1, 0.0
        centroids = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    return centroids


def describe_code(centroid: np.ndarray, patch: int) -> str:
    """A word for a code from its centroid: brightness, texture, colour, e.g. "bright flat blue"."""
    pixels = centroid.reshape(patch, patch, 3).astype(np.float64)
    luma = pixels @ np.array([0.299, 0.587, 0.114])
    mean = luma.mean()
    brightness = "dark" if mean < DARK else "bright" if mean > BRIGHT else "mid"
    if luma.std() < FLAT:
        texture = "flat"
    else:
        # Change down the rows (along y) is a horizontal edge; change along a row (along x) is a vertical edge.
        along_y = float(np.square(np.diff(luma, axis=0)).mean())
        along_x = float(np.square(np.diff(luma, axis=1)).mean())
        if along_y > EDGE_RATIO * along_x:
            texture = "edge-horizontal"
        elif along_x > EDGE_RATIO * along_y:
            texture = "edge-vertical"
        else:
            texture = "textured"
    red, green, blue = pixels.reshape(-1, 3).mean(axis=0)
    if max(red, green, blue) - min(red, green, blue) < GRAY_CHROMA:
        colour = "gray"
    else:
        hue = colorsys.rgb_to_hsv(red / 255.0, green / 255.0, blue / 255.0)[0] * 360.0
        colour = next(name for bound, name in HUES if hue < bound)
    return f"{brightness} {texture} {colour}"


def photo_paths(folder: str | os.PathLike) -> list[pathlib.Path]:
    """The photos in a folder, in a fixed order (the order changes the k-means result)."""
    return sorted(p for p in pathlib.Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def train_codebook(
    photo_paths: Sequence[str | os.PathLike], *, codes: int = 256, patch: int = 8, width: int = 128,
    height: int = 96, iterations: int = 20, seed: int = 0,
) -> PatchCodebook:
    """Train a codebook on the given photos (any format OpenCV reads; gray ones are used as gray RGB)."""
    photos = []
    for path in sorted(map(str, photo_paths)):
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"OpenCV cannot read {path}")
        photos.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not photos:
        raise ValueError("no photos to train the codebook on")
    photos = [turned for photo in photos for turned in hue_turned(photo)]
    points = training_patches(photos, width, height, patch)
    if len(points) > MAX_PATCHES:
        points = points[np.sort(np.random.default_rng(seed).choice(len(points), MAX_PATCHES, replace=False))]
    if len(points) < codes:
        raise ValueError(f"{len(points)} patches cannot train {codes} codes")
    centroids = kmeans(points, codes, iterations, seed)
    digest = hashlib.sha256(np.round(centroids, 2).tobytes()).hexdigest()[:8]
    version = f"v{FORMAT_VERSION}-k{codes}-p{patch}-{width}x{height}-s{seed}-{digest}"
    words = tuple(describe_code(c, patch) for c in centroids)
    return PatchCodebook(centroids=centroids, patch=patch, width=width, height=height, version=version, words=words)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=pathlib.Path, help="where to write the codebook (.npz)")
    parser.add_argument("--photos", type=pathlib.Path, help="folder of photos (default: the prepared skimage photos)")
    parser.add_argument("--codes", type=int, default=256)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.photos is None:
        from edge_lam.assets.cache import skimage_photos_dir

        args.photos = skimage_photos_dir()
    codebook = train_codebook(
        photo_paths(args.photos), codes=args.codes, patch=args.patch, width=args.width, height=args.height,
        iterations=args.iterations, seed=args.seed,
    )
    codebook.save(args.out)
    print(f"{codebook.size} codes, {len(set(codebook.words))} distinct words, {codebook.version} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
