"""JPEG encoding of RGB pictures (snapshots, MQTT snapshots), with Pillow.

Pillow loads with the first picture encoded, not on import.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


def encode_jpeg(picture: npt.NDArray[np.uint8], quality: int) -> bytes:
    """Return an RGB ``uint8`` picture of shape (H, W, 3) as JPEG bytes of ``quality`` (1-95).

    The picture may be a view (a region of a frame): it is not changed.
    """
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
