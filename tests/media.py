"""Test media made from the real photos scikit-image ships, encoded to H.264 with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
from skimage import data
from skimage.transform import resize

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def photo(name: str, size: tuple[int, int] | None = None) -> npt.NDArray[np.uint8]:
    """One of scikit-image's RGB photos as uint8, optionally resized to (height, width)."""
    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    if size is not None:
        image = (resize(image, size, anti_aliasing=True) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(image, dtype=np.uint8)


def make_clip(
    path: Path,
    *,
    seconds: float,
    fps: int = 30,
    size: tuple[int, int] = (240, 320),
    photos: tuple[str, ...] = PHOTOS,
    container_options: dict[str, str] | None = None,
    gop: int | None = None,
) -> Path:
    """Encode a slideshow of the photos (equal shares of the clip) as H.264 at ``fps``.

    A key frame starts every ``gop`` frames exactly when ``gop`` is given; by default
    at least once a second (``fps`` frames), and at scene cuts.
    """
    height, width = size
    frames = [photo(name, (height, width)) for name in photos]
    count = round(seconds * fps)
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(gop or fps)}
        if gop is not None:
            # No extra key frames at scene cuts: they would restart the GOP count.
            stream.options["sc_threshold"] = "0"
        for index in range(count):
            image = frames[min(index * len(frames) // count, len(frames) - 1)]
            # A moving bar keeps frames distinct so the encoder can't collapse them.
            image = image.copy()
            bar = (index * 4) % width
            image[:8, bar : bar + 8] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut_file(source: Path, dest: Path, *, keep: float, extra_bytes: int = 0) -> Path:
    """Copy the first ``keep`` share of ``source``'s bytes (plus ``extra_bytes``) to ``dest``:
    a file whose copy or recording was interrupted."""
    data = source.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep) + extra_bytes])
    return dest


def make_truncated_ts(folder: Path, *, seconds: float = 6, fps: int = 30) -> Path:
    """An MPEG-TS clip cut off mid-file, mid-packet: a transport stream declares no
    duration, so only the damaged last frame and packet tell that it was cut."""
    whole = make_clip(folder / "whole.ts", seconds=seconds, fps=fps)
    # Half the bytes plus a few: the last 188-byte TS packet, and the frame in it, are cut.
    return cut_file(whole, folder / "truncated.ts", keep=0.5, extra_bytes=100)


def make_scene_clip(
    path: Path,
    *,
    seconds: float,
    changes: tuple[float, ...],
    box: tuple[int, int, int, int],
    contents: tuple[str, ...] = ("chelsea", "rocket", "chelsea"),
    fps: int = 10,
    size: tuple[int, int] = (240, 320),
    noise: float = 2.5,
    passer_by: bool = True,
    seed: int = 0,
) -> Path:
    """Encode a fixed camera's scene as H.264: a still photo with sensor noise (Gaussian,
    ``noise`` levels), a region ``box`` (x, y, w, h) whose content is a different photo
    after each time in ``changes``, and a passer-by (a photo patch) crossing the lower
    left part of the frame, outside the box.
    """
    rng = np.random.default_rng(seed)
    height, width = size
    background = photo("coffee", size).astype(np.float32)
    x, y, w, h = box
    pictures = [photo(name, (h, w)) for name in contents]
    walker = photo("astronaut", (56, 56))
    count = round(seconds * fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(fps)}
        for index in range(count):
            t = index / fps
            noisy = background + rng.normal(0.0, noise, background.shape).astype(np.float32)
            image = np.clip(noisy, 0, 255).astype(np.uint8)
            shown = sum(1 for change in changes if t >= change - 1e-9)
            image[y : y + h, x : x + w] = pictures[min(shown, len(pictures) - 1)]
            if passer_by:
                # Left to right along the bottom, once every 4 s; never inside the box.
                left = int((t % 4.0) / 4.0 * (min(x, width) - 56)) if x >= 56 else 0
                image[height - 56 :, left : left + 56] = walker
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_labelled_pictures(
    folder: Path,
    photos: dict[str, str],
    per_label: int,
    *,
    size: tuple[int, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write ``folder/<label>/NN.jpg``: ``per_label`` pictures per label, each a random crop
    (60-90 % of each side) of the label's photo, flipped half the time, with Gaussian noise
    (sigma 12 levels), so that no two are the same; resized to ``size`` (height, width)
    when given, as a camera's snapshots would be."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in photos.items():
        image = photo(name)
        height, width, _ = image.shape
        (folder / label).mkdir(parents=True)
        for index in range(per_label):
            h, w = (int(side * rng.uniform(0.6, 0.9)) for side in (height, width))
            y, x = rng.integers(0, height - h), rng.integers(0, width - w)
            crop = image[y : y + h, x : x + w].astype(np.float32)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop += rng.normal(0, 12, crop.shape)
            picture = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8))
            if size is not None:
                picture = picture.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            picture.save(folder / label / f"{index:02d}.jpg", quality=90)
    return folder
