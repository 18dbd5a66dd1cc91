"""Request bodies -> decoded RGB images, with one-line reasons for everything a client can get wrong.

Two ways to send images: a multipart form (one or more file parts named `image` or `images`,
plus optional text fields), or the raw bytes of one image with an `image/*` content type.
Bodies are parsed by Starlette, whose multipart parser spools large parts to temporary files
in the server's own temp folder (see `app.py`), deleted when the request ends; nothing is ever
written or read at a path a client names.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from recognize.images import to_rgb

IMAGE_FIELDS = ("image", "images")


class UploadProblem(Exception):
    """A client error with its HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Upload:
    name: str
    data: bytes


@dataclass
class ParsedBody:
    uploads: list[Upload]
    fields: dict[str, list[str]] = field(default_factory=dict)


def clean_name(name: str | None, index: int) -> str:
    """A display name for an upload: the file name's last part, printable, short. Never a path."""
    name = re.split(r"[\\/]", name or "")[-1]
    name = re.sub(r"[^\w.\- ()+@]", "_", name).strip(" .")[:120]
    return name or f"image-{index + 1}"


def decode_image(upload: Upload, max_pixels: int) -> np.ndarray:
    """RGB uint8 HxWx3 (EXIF orientation applied), or `UploadProblem` 422 / 413."""
    if not upload.data:
        raise UploadProblem(422, f"{upload.name}: empty upload")
    try:
        with Image.open(io.BytesIO(upload.data)) as image:
            if image.width * image.height > max_pixels:
                raise UploadProblem(413, f"{upload.name}: {image.width}x{image.height} is over the "
                                         f"{max_pixels}-pixel limit")
            image.load()
            return np.asarray(to_rgb(ImageOps.exif_transpose(image)))
    except UploadProblem:
        raise
    except Image.DecompressionBombError:
        raise UploadProblem(413, f"{upload.name}: refused as a decompression bomb") from None
    except UnidentifiedImageError:
        raise UploadProblem(422, f"{upload.name}: not an image (or an unsupported format)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UploadProblem(422, f"{upload.name}: unreadable image ({reason})") from None


async def read_body(request, max_images: int) -> ParsedBody:  # request: starlette.requests.Request
    """The uploads and text fields of a request (multipart form, or one raw image)."""
    from starlette.datastructures import UploadFile
    from starlette.requests import ClientDisconnect

    from recognize.serve.guard import BodyTooLarge

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=max_images, max_fields=64, max_part_size=64 * 1024)
        except (UploadProblem, ClientDisconnect, BodyTooLarge):
            raise
        except Exception as exc:  # noqa: BLE001 - starlette reports malformed forms in several ways
            reason = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            status = 413 if "Too many files" in str(reason) else 422
            if status == 413:
                reason = f"{reason} (at most {max_images} images per request)"
            raise UploadProblem(status, f"malformed multipart body: {str(reason).splitlines()[0]}") from None
        try:
            uploads: list[Upload] = []
            fields: dict[str, list[str]] = {}
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key not in IMAGE_FIELDS:
                        raise UploadProblem(422, f"unknown file field {key!r}; send images as 'images'")
                    uploads.append(Upload(clean_name(value.filename, len(uploads)), await value.read()))
                else:
                    fields.setdefault(key, []).append(value)
        finally:
            await form.close()  # deletes the spooled temporary files now
        return ParsedBody(uploads, fields)
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        data = await request.body()
        name = clean_name(request.query_params.get("name"), 0)
        return ParsedBody([Upload(name, data)] if data else [])
    shown = content_type or "none"
    raise UploadProblem(415, f"unsupported content type {shown!r}: send multipart/form-data with 'images' "
                             "file parts, or one image's bytes with an image/* content type")
