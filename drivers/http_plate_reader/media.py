"""The media store moved to `gateway.media` (cameras share it); kept so existing imports work."""

from gateway.media import MediaStore, image_name

__all__ = ["MediaStore", "image_name"]
