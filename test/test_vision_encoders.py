"""The camera encoder cores on real photos: decoding, classification, patch tokens, and the camera bag."""

from __future__ import annotations

import array
import struct
import zlib

import cv2
import numpy as np
import pytest

from edge_lam.assets.cache import camera_bag_dir, patch_codebook_npz, skimage_photos_dir
from edge_lam.encoders.classifier import EfficientNetClassifier, imagenet_vocabulary
from edge_lam.encoders.image import compressed_to_rgb, image_to_rgb, shrink
from edge_lam.encoders.image_size import declared_size
from edge_lam.encoders.patches import PatchCodebook, PatchTokenizer, load_codebook
from edge_lam.encoders.tokens import EncoderInputError
from edge_lam.prepare.codebook import describe_code, hue_turned, kmeans, photo_paths, training_patches
from edge_lam.prepare.steps import CAMERA_BAG_FRAMES_PER_PHOTO, CAMERA_BAG_PHOTOS, CAMERA_BAG_TOPIC

CATS = {"tabby", "tiger cat", "Egyptian cat"}


def photo(name: str) -> np.ndarray:
    bgr = cv2.imread(str(skimage_photos_dir() / name), cv2.IMREAD_COLOR)
    assert bgr is not None, name
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def vga(rgb: np.ndarray) -> np.ndarray:
    return cv2.resize(rgb, (640, 480), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def classifier() -> EfficientNetClassifier:
    return EfficientNetClassifier(threads=1)


@pytest.fixture(scope="module")
def tokenizer() -> PatchTokenizer:
    return PatchTokenizer.from_file(patch_codebook_npz())


@pytest.fixture(scope="module")
def bag_frames() -> list[tuple[int, object]]:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    with AnyReader([camera_bag_dir()], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        connections = [c for c in reader.connections if c.topic == CAMERA_BAG_TOPIC]
        assert [c.msgtype for c in connections] == ["sensor_msgs/msg/CompressedImage"]
        return [(t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages(connections=connections)]


# --- the ImageNet vocabulary and the classifier ---------------------------------------------------------------------


def test_imagenet_vocabulary_is_the_1000_classes_in_index_order():
    words = imagenet_vocabulary().words
    assert len(words) == 1000
    assert (words[0], words[281], words[285], words[967], words[999]) == (
        "tench", "tabby", "Egyptian cat", "espresso", "toilet tissue")


def test_the_cat_photo_is_a_cat_and_the_coffee_photo_is_espresso(classifier):
    cat = classifier.encode(vga(photo("chelsea.png")))
    coffee = classifier.encode(vga(photo("coffee.png")))
    vocabulary = classifier.vocabulary
    assert CATS & set(vocabulary.describe(cat.ids)), vocabulary.describe(cat.ids)
    assert {"espresso", "cup"} & set(vocabulary.describe(coffee.ids)), vocabulary.describe(coffee.ids)
    assert vocabulary.word(int(cat.ids[0])) in CATS and vocabulary.word(int(coffee.ids[0])) == "espresso"
    for encoded in (cat, coffee):
        assert encoded.ids.shape == (5,) and len(set(encoded.ids.tolist())) == 5
        assert np.all(np.diff(encoded.scores) <= 0) and 0.0 < encoded.scores.sum() <= 1.0 + 1e-6
        assert encoded.embedding.shape == (1, 1280) and encoded.embedding.dtype == np.float32
        assert np.isfinite(encoded.embedding).all()
    # Different pictures, different features: the embedding carries the picture, not a constant.
    cosine = float(cat.embedding[0] @ coffee.embedding[0]) / (
        np.linalg.norm(cat.embedding) * np.linalg.norm(coffee.embedding))
    assert cosine < 0.9


def test_top_k_is_a_parameter_and_frames_from_the_bag_classify_too(classifier, bag_frames):
    _, message = bag_frames[0]  # the camera starts on the cat
    encoded = classifier.encode(compressed_to_rgb(message.format, message.data), top_k=3)
    assert encoded.ids.shape == (3,) and encoded.scores.shape == (3,)
    assert CATS & set(classifier.vocabulary.describe(encoded.ids))


def test_the_classifier_refuses_what_is_not_an_rgb_frame(classifier):
    with pytest.raises(EncoderInputError):
        classifier.encode(np.zeros((480, 640), np.uint8))
    with pytest.raises(EncoderInputError):
        classifier.encode(np.zeros((480, 640, 3), np.float32))


# --- decoding camera messages ----------------------------------------------------------------------------------------


def test_rgb8_bgr8_and_mono8_decode_to_the_same_picture():
    rgb = photo("chelsea.png")
    height, width = rgb.shape[:2]
    assert np.array_equal(image_to_rgb("rgb8", height, width, width * 3, rgb.tobytes()), rgb)
    assert np.array_equal(image_to_rgb("bgr8", height, width, width * 3, rgb[:, :, ::-1].tobytes()), rgb)
    rgba = np.dstack([rgb, np.full((height, width), 7, np.uint8)])
    assert np.array_equal(image_to_rgb("rgba8", height, width, width * 4, rgba.tobytes()), rgb)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    mono = image_to_rgb("mono8", height, width, width, gray.tobytes())
    assert mono.shape == (height, width, 3) and all(np.array_equal(mono[:, :, c], gray) for c in range(3))


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview, "array", "ndarray"])
def test_every_buffer_type_a_message_field_can_be(kind):
    rgb = photo("coffee.png")
    height, width = rgb.shape[:2]
    raw = rgb.tobytes()
    data = {"array": lambda b: array.array("B", b), "ndarray": lambda b: np.frombuffer(b, np.uint8).copy()}.get(
        kind, kind)(raw)
    assert np.array_equal(image_to_rgb("rgb8", height, width, width * 3, data), rgb)


def test_raw_rgb8_is_wrapped_not_copied():
    rgb = photo("chelsea.png")
    data = rgb.reshape(-1).copy()
    decoded = image_to_rgb("rgb8", rgb.shape[0], rgb.shape[1], rgb.shape[1] * 3, data)
    assert np.shares_memory(decoded, data)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_padded_rows_are_skipped(encoding):
    rgb = photo("astronaut.png")[:101, :203]  # odd sizes, so no padding can happen to line up
    pixels = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "mono8": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]}[
        encoding]
    height, width, channels = pixels.shape
    step = width * channels + 13
    padded = np.full((height, step), 0xAB, np.uint8)  # loud padding: it would show if it leaked into the pixels
    padded[:, : width * channels] = pixels.reshape(height, -1)
    decoded = image_to_rgb(encoding, height, width, step, padded.tobytes())
    expected = np.repeat(pixels, 3, axis=2) if encoding == "mono8" else rgb
    assert np.array_equal(decoded, expected)


@pytest.mark.parametrize("format_", ["jpeg", "rgb8; jpeg compressed bgr8", "png", "bgr8; png compressed bgr8"])
def test_compressed_frames_decode_to_the_same_picture(format_):
    rgb = photo("chelsea.png")
    extension = ".png" if "png" in format_ else ".jpg"
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    decoded = compressed_to_rgb(format_, encoded.tobytes())
    assert decoded.shape == rgb.shape and decoded.dtype == np.uint8
    error = np.abs(decoded.astype(np.int16) - rgb).mean()
    if extension == ".png":
        assert error == 0
    else:
        # Close, and in RGB order: swapped channels would be off by far more than JPEG's loss.
        assert error < 4.0
        assert error < np.abs(decoded[:, :, ::-1].astype(np.int16) - rgb).mean() / 2


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_shrinking_a_decoded_view_equals_shrinking_a_packed_copy(encoding):
    rgb = photo("motorcycle_left.png")  # 741x500: area averaging at a ratio that is not a whole number
    height, width = rgb.shape[:2]
    pixels = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "mono8": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)}[encoding]
    channels = 1 if encoding == "mono8" else 3
    view = image_to_rgb(encoding, height, width, width * channels, np.ascontiguousarray(pixels).tobytes())
    expected = cv2.resize(np.ascontiguousarray(view), (128, 96), interpolation=cv2.INTER_AREA)
    assert np.array_equal(shrink(view, 128, 96), expected)


BAD_RAW = {
    "unknown encoding": ("yuv422", 4, 4, 8, bytes(32)),
    "16-bit depth": ("16UC1", 4, 4, 8, bytes(32)),
    "zero width": ("rgb8", 4, 0, 0, b""),
    "zero height": ("rgb8", 0, 4, 12, b""),
    "step shorter than a row": ("rgb8", 4, 4, 11, bytes(48)),
    "truncated data": ("rgb8", 4, 4, 12, bytes(47)),
    "truncated padded data": ("bgr8", 4, 4, 16, bytes(60)),
    "not a buffer": ("mono8", 2, 2, 2, [1, 2, 3, 4]),
    "data longer than its rows": ("rgb8", 4, 4, 12, bytes(49)),
    "more pixels than allowed": ("mono8", 600, 2000, 2000, bytes(1_200_000), 1_000_000),
}


@pytest.mark.parametrize("fields", BAD_RAW.values(), ids=BAD_RAW.keys())
def test_bad_raw_images_are_refused(fields):
    with pytest.raises(EncoderInputError):
        image_to_rgb(*fields)


def test_the_errors_say_what_is_wrong():
    with pytest.raises(EncoderInputError, match="yuv422"):
        image_to_rgb("yuv422", 4, 4, 8, bytes(32))
    with pytest.raises(EncoderInputError, match="truncated"):
        image_to_rgb("rgb8", 4, 4, 12, bytes(47))


def jpeg_bytes() -> bytes:
    ok, encoded = cv2.imencode(".jpg", photo("coffee.png"))
    assert ok
    return encoded.tobytes()


def claiming(size: tuple[int, int], extension: str) -> bytes:
    """A small valid file of ``extension`` whose header is rewritten to claim ``size`` (width, height)."""
    ok, encoded = cv2.imencode(extension, photo("coffee.png")[:16, :16])
    assert ok
    data = bytearray(encoded.tobytes())
    width, height = size
    if extension == ".png":
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # a valid IHDR CRC: only the size lies
    else:
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("extension", [".png", ".jpg"])
def test_the_size_a_file_declares_is_checked_before_it_is_decoded(extension):
    """Crash 2 of the findings: a PNG claiming 65535x65535 made OpenCV raise; an 811-byte JPEG claiming 30000x30000
    took 5.4 GB. The declared size is read from the header and refused over max_pixels, decoding nothing."""
    assert declared_size(claiming((16, 16), extension)) == (16, 16)
    for size in ((65535, 65535), (30000, 30000), (2000, 600)):
        data = claiming(size, extension)
        assert declared_size(data) == size
        with pytest.raises(EncoderInputError, match="max_image_pixels=1000000"):
            compressed_to_rgb("png" if extension == ".png" else "jpeg", data, max_pixels=1_000_000)
    assert compressed_to_rgb("jpeg", claiming((16, 16), extension), max_pixels=256).shape == (16, 16, 3)


BAD_COMPRESSED = {
    "empty": ("jpeg", b""),
    "neither PNG nor JPEG": ("bmp", lambda: cv2.imencode(".bmp", photo("coffee.png"))[1].tobytes()),
    "JPEG without a frame header": ("jpeg", b"\xff\xd8\xff\xe0\x00\x04ab\xff\xda\x00\x02" + bytes(100)),
    "JPEG stating no height": ("jpeg", lambda: claiming((16, 0), ".jpg")),
    "not an image": ("jpeg", b"this is not a jpeg at all" * 20),
    "header only": ("jpeg", lambda: jpeg_bytes()[:20]),
    "compressed depth": ("16UC1; compressedDepth png", lambda: jpeg_bytes()),
}


@pytest.mark.parametrize("fields", BAD_COMPRESSED.values(), ids=BAD_COMPRESSED.keys())
def test_bad_compressed_images_are_refused(fields):
    format_, data = fields
    with pytest.raises(EncoderInputError):
        compressed_to_rgb(format_, data() if callable(data) else data)


# --- the patch tokenizer ---------------------------------------------------------------------------------------------


def test_a_vga_frame_becomes_the_documented_grid(tokenizer):
    assert tokenizer.grid == (12, 16)
    encoded = tokenizer.encode(vga(photo("rocket.jpg")))
    assert encoded.shape == (12, 16) and encoded.ids.shape == (192,) and encoded.ids.dtype == np.uint32
    assert encoded.ids.max() < tokenizer.codebook.size
    other_size = tokenizer.encode(photo("rocket.jpg"))  # 640x427: any size is stretched to the working size
    assert other_size.shape == (12, 16)


def test_tokens_are_deterministic_and_follow_the_picture(tokenizer):
    frame = vga(photo("astronaut.png"))
    first = tokenizer.encode(frame).ids
    assert np.array_equal(first, tokenizer.encode(frame.copy()).ids)
    assert np.array_equal(first, PatchTokenizer.from_file(patch_codebook_npz()).encode(frame).ids)
    assert np.mean(first != tokenizer.encode(vga(photo("coffee.png"))).ids) > 0.5


def test_the_matmul_picks_the_truly_nearest_code(tokenizer):
    from edge_lam.encoders.patches import frame_patches

    frame = vga(photo("motorcycle_left.png"))
    book = tokenizer.codebook
    patches = frame_patches(frame, book.width, book.height, book.patch).astype(np.float64)
    distances = ((patches[:, None, :] - book.centroids[None, :, :].astype(np.float64)) ** 2).sum(axis=2)
    chosen = tokenizer.encode(frame).ids
    best = distances.min(axis=1)
    # Ties aside (float32 rounding), the chosen code is the nearest one.
    assert np.all(distances[np.arange(len(chosen)), chosen] <= best * (1 + 1e-5) + 1e-3)


def test_the_codebook_reconstructs_better_than_random_patches(tokenizer, bag_frames):
    book = tokenizer.codebook
    # The baseline draws its codes from the same patches k-means was trained on.
    photos = [turned for path in photo_paths(skimage_photos_dir()) for turned in hue_turned(photo(path.name))]
    candidates = training_patches(photos, book.width, book.height, book.patch)
    random_codes = candidates[np.random.default_rng(0).choice(len(candidates), book.size, replace=False)]
    random_book = PatchCodebook(
        centroids=random_codes.astype(np.float32), patch=book.patch, width=book.width, height=book.height,
        version="random", words=("random",) * book.size,
    )
    baseline = PatchTokenizer(random_book)
    trained_error, random_error = [], []
    for _, message in bag_frames[::5]:
        frame = compressed_to_rgb(message.format, message.data)
        target = cv2.resize(frame, (book.width, book.height), interpolation=cv2.INTER_AREA).astype(np.float64)
        for coder, errors in ((tokenizer, trained_error), (baseline, random_error)):
            errors.append(np.mean((coder.reconstruct(coder.encode(frame).ids) - target) ** 2))
    # Measured: about 700 against 970 (squared 8-bit levels); k-means must keep a clear lead.
    assert np.mean(trained_error) < 0.85 * np.mean(random_error), (np.mean(trained_error), np.mean(random_error))


def test_the_codebook_file_and_its_words():
    book = load_codebook(patch_codebook_npz())
    assert (book.patch, book.width, book.height, book.size) == (8, 128, 96, 256)
    assert book.version.startswith("v1-k256-p8-128x96")
    for word in book.words:
        brightness, texture, colour = word.split(" ")
        assert brightness in {"dark", "mid", "bright"}
        assert texture in {"flat", "edge-horizontal", "edge-vertical", "textured"}
        assert colour in {"gray", "red", "orange", "yellow", "green", "cyan", "blue", "purple"}
    assert len(set(book.words)) >= 20  # the words tell codes apart, not one word for all


def test_words_describe_what_a_patch_looks_like():
    flat_blue = np.zeros((8, 8, 3), np.float32) + np.array([60, 110, 235], np.float32)
    assert describe_code(flat_blue.reshape(-1), 8) == "mid flat blue"
    horizontal_edge = np.zeros((8, 8, 3), np.float32)
    horizontal_edge[4:] = 220  # dark above, bright below
    assert describe_code(horizontal_edge.reshape(-1), 8) == "mid edge-horizontal gray"
    assert describe_code(horizontal_edge.transpose(1, 0, 2).reshape(-1), 8) == "mid edge-vertical gray"
    assert describe_code(np.full(192, 240.0, np.float32), 8) == "bright flat gray"


def test_kmeans_is_deterministic_for_a_seed():
    points = np.random.default_rng(3).normal(size=(600, 12)).astype(np.float32)
    first, again, other = kmeans(points, 8, 5, seed=1), kmeans(points, 8, 5, seed=1), kmeans(points, 8, 5, seed=2)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_the_tokenizer_refuses_what_is_not_an_rgb_frame(tokenizer):
    with pytest.raises(EncoderInputError):
        tokenizer.encode(np.zeros((480, 640), np.uint8))
    with pytest.raises(EncoderInputError):
        tokenizer.encode(np.zeros((0, 640, 3), np.uint8))


# --- the camera bag --------------------------------------------------------------------------------------------------


def test_the_camera_bag_holds_10_hz_vga_frames_stamped_with_bag_time(bag_frames):
    assert len(bag_frames) == len(CAMERA_BAG_PHOTOS) * CAMERA_BAG_FRAMES_PER_PHOTO == 60
    times = np.array([t for t, _ in bag_frames])
    assert np.all(np.diff(times) == 100_000_000)
    previous = None
    for bag_time, message in bag_frames:
        assert message.header.stamp.sec * 10**9 + message.header.stamp.nanosec == bag_time
        assert message.header.frame_id == "camera" and "jpeg" in message.format
        frame = compressed_to_rgb(message.format, message.data)
        assert frame.shape == (480, 640, 3)
        if previous is not None:  # the camera moves: no two frames in a row are the same
            assert np.abs(frame.astype(np.int16) - previous).mean() > 0.5
        previous = frame
    assert camera_bag_dir().joinpath("metadata.yaml").read_text().count("storage_identifier: mcap") == 1
