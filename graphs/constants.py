"""Names shared by the node specs and the stages (ComfyUI's spellings)."""

SAMPLER_NAMES = (
    "euler",
    "euler_ancestral",
    "heun",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "ddim",
    "lms",
    "uni_pc",
)
SCHEDULER_NAMES = ("normal", "karras", "exponential", "simple", "sgm_uniform", "ddim_uniform")

IMAGE_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic")
CROP_METHODS = ("disabled", "center")
