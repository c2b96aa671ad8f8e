"""Built-in nodes (ComfyUI core names)."""

from graphs.nodes.conditioning import CLIPTextEncode, ControlNetApply, ControlNetApplyAdvanced
from graphs.nodes.image import ImageScale, LoadImage, PreviewImage, SaveImage
from graphs.nodes.latent import EmptyLatentImage, LatentUpscale, VAEDecode, VAEEncode
from graphs.nodes.loaders import CheckpointLoaderSimple, ControlNetLoader, LoraLoader, VAELoader
from graphs.nodes.sampling import KSampler, KSamplerAdvanced

ALL_NODES = (
    CheckpointLoaderSimple,
    CLIPTextEncode,
    ControlNetLoader,
    LoadImage,
    ControlNetApply,
    ControlNetApplyAdvanced,
    EmptyLatentImage,
    KSampler,
    KSamplerAdvanced,
    VAEDecode,
    VAEEncode,
    SaveImage,
    PreviewImage,
    LoraLoader,
    LatentUpscale,
    ImageScale,
    VAELoader,
)

__all__ = [cls.__name__ for cls in ALL_NODES] + ["ALL_NODES"]
