"""Constants and environment variable names of the serving layer (all prefixed GENSERVE_)."""

ENV_PREFIX = "GENSERVE_"
DEFAULT_PORT = 8188  # ComfyUI's default port, so existing clients work unchanged
DEFAULT_HOST = "127.0.0.1"
APP_NAME = "genserve"
INGRESS_DEPLOYMENT = "Ingress"
MAX_UPLOAD_BYTES_DEFAULT = 20 * 1024 * 1024
ALLOWED_UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
MAX_UPLOAD_PIXELS = 64 * 1024 * 1024
