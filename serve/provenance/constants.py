"""Constants and environment variable names of the provenance package."""

#: PEM certificate chain (leaf first): a file path or the PEM text.
ENV_C2PA_CERT = "GENSERVE_C2PA_CERT"
#: PEM private key of the leaf certificate: a file path or the PEM text.
ENV_C2PA_KEY = "GENSERVE_C2PA_KEY"
#: Signing algorithm: es256 (default for EC P-256), es384, es512, ps256, ps384, ps512, ed25519.
ENV_C2PA_ALG = "GENSERVE_C2PA_ALG"
#: Optional RFC 3161 time-stamp authority URL.
ENV_C2PA_TSA_URL = "GENSERVE_C2PA_TSA_URL"
#: Extra trust anchors for verification (PEM file path or PEM text).
ENV_C2PA_TRUST_ANCHORS = "GENSERVE_C2PA_TRUST_ANCHORS"

#: Folder under the data dir for the generated development CA.
DEV_DIR_NAME = "c2pa"
DEV_CA_DAYS = 3650
DEV_SIGNER_DAYS = 825

#: Label of genserve's own manifest assertion.
GENERATION_ASSERTION_LABEL = "org.genserve.generation"
#: IPTC digital source type for images made by a generative model.
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
#: Software agent / claim generator name.
SOFTWARE_AGENT_NAME = "genserve"

#: CAWG training-and-data-mining entry names and the values they accept.
TRAINING_MINING_ENTRIES = (
    "cawg.ai_inference",
    "cawg.ai_generative_training",
    "cawg.ai_training",
    "cawg.data_mining",
)
TRAINING_MINING_USES = ("allowed", "notAllowed", "constrained")
