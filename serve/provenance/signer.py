"""C2PA signing and verification with c2pa-python (tested against c2pa-python 0.38.1, c2pa-rs 0.91.3).

API facts this module relies on (read from the installed package, not guessed):

* ``c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg, cert_chain_pem, key_pem, tsa_url))`` makes
  a signer; ``create_signer`` / ``create_signer_from_info`` are deprecated.
* ``c2pa.Builder(manifest_definition, context=ctx)``, ``builder.add_ingredient(json, mime,
  stream)``, ``builder.sign(signer, mime, source_stream, dest_stream)``. A Builder signs once.
* Settings go through ``c2pa.Context.from_dict(settings)`` passed to Builder/Reader;
  ``c2pa.load_settings`` is deprecated and Reader/Builder no longer read it.
* Trust anchors: ``{"trust": {"trust_anchors": "<PEM roots>"}}`` in the Context settings
  of the Reader (``verify.verify_trust`` is on by default). Without anchors a correctly
  signed file reads as ``Valid`` with the failure code ``signingCredential.untrusted``;
  with its root as an anchor it reads as ``Trusted``.
* ``c2pa.Reader(mime, stream, context=ctx)`` raises ``C2paError.ManifestNotFound`` when the
  file has no manifest; ``reader.json()`` holds ``validation_state`` and
  ``validation_results`` (``activeManifest.{success,informational,failure}``).
* c2pa-rs refuses to sign with an expired certificate or a key that does not match it
  (``C2paError.Signature``), but it does sign with a certificate lacking the
  digitalSignature key usage (nonRepudiation suffices for it): `keys.validate_credentials`
  is stricter, as the C2PA spec asks.
* Known c2pa-rs bug (contentauth/c2pa-rs#2570, open for 0.91.3): ``Reader.json()`` renders a
  custom assertion's array of small integers (e.g. ``"seeds": [5, 7]``) as a base64 byte
  string and truncates values above 255. The stored CBOR is correct and ``Reader.crjson()``
  renders it correctly, so `read_manifest_store` takes the data of ``org.genserve.*``
  assertions from crJSON.
* The builder's automatic thumbnail is on by default in c2pa-rs; for a noisy 256x256 PNG it
  grew the file from 0.2 MB to 1.4 MB and signing from 2 ms to 90 ms, so it is off here
  unless asked for.

Usage::

    signer = C2paSigner(resolve_credentials(data_dir))
    signed = signer.sign(png_bytes, "image/png", GenerationInfo(...), [Ingredient(...)])
    report = signer.verify(signed, trust_anchors_pem=ca_pem)
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from typing import Any, Iterable, Mapping

import c2pa

from serve.provenance.constants import (
    GENERATION_ASSERTION_LABEL,
    SOFTWARE_AGENT_NAME,
    TRAINED_ALGORITHMIC_MEDIA,
    TRAINING_MINING_ENTRIES,
    TRAINING_MINING_USES,
)
from serve.provenance.keys import SignerCredentials, SigningConfigError, validate_credentials
from serve.provenance.models import (
    C2paReport,
    GenerationInfo,
    Ingredient,
    IngredientSummary,
    ManifestSummary,
    VerifyReport,
)

logger = logging.getLogger(__name__)

#: Failure codes that mean the bytes the signature covers were changed.
HASH_MISMATCH_CODES = frozenset(
    {
        "assertion.dataHash.mismatch",
        "assertion.boxesHash.mismatch",
        "assertion.bmffHash.mismatch",
        "assertion.collectionHash.mismatch",
    }
)
HASH_MATCH_CODES = frozenset(
    {"assertion.dataHash.match", "assertion.boxesHash.match", "assertion.bmffHash.match", "assertion.collectionHash.match"}
)
UNTRUSTED_CODE = "signingCredential.untrusted"

SUPPORTED_MIMES = ("image/png", "image/jpeg")


def genserve_version() -> str:
    """genserve's installed version, or ``0.0.0+local`` when run from a source tree."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("genserve")
    except PackageNotFoundError:
        return "0.0.0+local"


class SigningError(RuntimeError):
    """Signing failed; no signed image was produced. Never publish the unsigned input instead."""


class InvalidImageError(ValueError):
    """The bytes are not a readable PNG/JPEG (corrupted, truncated or another format)."""


def sniff_mime(data: bytes) -> str | None:
    """MIME type from the leading magic bytes (PNG, JPEG, WebP, GIF, TIFF), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


def decode_image(data: bytes):
    """Fully decodes ``data`` with Pillow and returns an RGB ``PIL.Image``.

    Raises:
        InvalidImageError: if the bytes are empty, truncated, corrupted or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidImageError("the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # NOTE: open() only reads the header; load() finds truncation/corruption.
            return im.convert("RGB")
    except UnidentifiedImageError as e:
        raise InvalidImageError(f"not a recognised image format ({len(data)} bytes)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidImageError(f"the image is corrupted or truncated: {e}") from e


def training_mining_assertion(config: Mapping[str, str]) -> dict[str, Any]:
    """Builds the ``cawg.training-mining`` assertion from ``{entry: use}``.

    Args:
        config: e.g. ``{"cawg.ai_generative_training": "notAllowed"}``; entry names may omit
            the ``cawg.`` prefix.

    Raises:
        ValueError: for an unknown entry or use value.
    """
    entries = {}
    for name, use in config.items():
        full = name if name.startswith("cawg.") else f"cawg.{name}"
        if full not in TRAINING_MINING_ENTRIES:
            raise ValueError(f"unknown training-mining entry {name!r}; use one of {list(TRAINING_MINING_ENTRIES)}")
        if use not in TRAINING_MINING_USES:
            raise ValueError(f"training-mining use for {full} must be one of {list(TRAINING_MINING_USES)}, got {use!r}")
        entries[full] = {"use": use}
    return {"label": "cawg.training-mining", "data": {"entries": entries}}


class C2paSigner:
    """Signs PNG/JPEG bytes with an embedded C2PA manifest, and verifies such files.

    Plain class, no Ray: the provenance service owns one; tests build one from
    `keys.ensure_dev_credentials(tmp_path)`.

    Args:
        credentials (`SignerCredentials`): validated signing credentials.
        training_mining (`dict[str, str]`, *optional*): CAWG training/mining entries, e.g.
            ``{"cawg.ai_generative_training": "notAllowed"}``; omitted from the manifest when None.
        thumbnail (`bool`, *optional*, defaults to False): let c2pa embed a thumbnail.
        claim_generator (`str`, *optional*, defaults to ``"genserve"``): claim generator / software agent name.

    Raises:
        SigningConfigError: if the credentials fail validation.
        ValueError: if ``training_mining`` is malformed.
    """

    def __init__(
        self,
        credentials: SignerCredentials,
        training_mining: Mapping[str, str] | None = None,
        thumbnail: bool = False,
        claim_generator: str = SOFTWARE_AGENT_NAME,
    ):
        validate_credentials(credentials)
        self.credentials = credentials
        self.training_mining = training_mining_assertion(training_mining) if training_mining else None
        self.thumbnail = thumbnail
        self.claim_generator = claim_generator
        self.version = genserve_version()

    # -- signing ---------------------------------------------------------------------------

    def manifest_definition(
        self, mime: str, generation: GenerationInfo, title: str | None = None
    ) -> dict[str, Any]:
        """The manifest definition (c2pa Builder JSON) for one output."""
        agent = {"name": self.claim_generator, "version": self.version}
        created = {
            "action": "c2pa.created",
            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
            "softwareAgent": agent,
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        assertions: list[dict[str, Any]] = [
            {"label": "c2pa.actions", "data": {"actions": [created]}},
            {"label": GENERATION_ASSERTION_LABEL, "data": generation.model_dump(mode="json", exclude_none=True)},
        ]
        if self.training_mining:
            assertions.append(self.training_mining)
        ext = "png" if mime == "image/png" else "jpg"
        return {
            "claim_generator_info": [agent],
            "title": title or f"{generation.artifact_id or 'genserve-output'}.{ext}",
            "format": mime,
            "assertions": assertions,
        }

    def sign(
        self,
        image_bytes: bytes,
        mime: str,
        generation: GenerationInfo,
        ingredients: Iterable[Ingredient] = (),
        title: str | None = None,
    ) -> bytes:
        """Embeds a signed C2PA manifest into an encoded PNG/JPEG.

        Args:
            image_bytes (`bytes`): the final encoded image (watermark already applied).
            mime (`str`): ``image/png`` or ``image/jpeg``; must match the bytes.
            generation (`GenerationInfo`): what produced the image.
            ingredients (`Iterable[Ingredient]`, *optional*): input images, added as ingredients.
            title (`str`, *optional*): manifest title; defaults to ``<artifact_id>.<ext>``.

        Returns:
            The signed file's bytes. Never the unsigned input.

        Raises:
            SigningError: if the inputs are unusable, the credentials expired since startup,
                or c2pa fails to sign or to read its own output back.
        """
        # 1. Check inputs.
        if mime not in SUPPORTED_MIMES:
            raise SigningError(f"cannot sign {mime!r}; genserve signs {list(SUPPORTED_MIMES)}")
        sniffed = sniff_mime(image_bytes)
        if sniffed != mime:
            raise SigningError(f"image bytes look like {sniffed or 'unknown data'}, not {mime}")
        try:
            validate_credentials(self.credentials)  # NOTE: certificates can expire while a server runs.
        except SigningConfigError as e:
            raise SigningError(f"refusing to sign: {e}") from e

        # 2. Manifest definition and ingredients.
        definition = self.manifest_definition(mime, generation, title)
        context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": self.thumbnail}}})
        try:
            builder = c2pa.Builder(definition, context=context)
            for ing in ingredients:
                self._add_ingredient(builder, ing)

            # 3. Sign.
            creds = self.credentials
            info = c2pa.C2paSignerInfo(creds.alg, creds.cert_chain_pem, creds.private_key_pem, creds.tsa_url)
            with c2pa.Signer.from_info(info) as signer:
                dest = io.BytesIO()
                builder.sign(signer, mime, io.BytesIO(image_bytes), dest)
        except SigningError:
            raise
        except c2pa.C2paError as e:
            raise SigningError(f"C2PA signing failed: {e}") from e
        signed = dest.getvalue()

        # 4. Read our own output back: never hand out a file whose manifest does not validate.
        try:
            with c2pa.Reader(mime, io.BytesIO(signed)) as reader:
                state = reader.get_validation_state()
                results = reader.get_validation_results() or {}
        except c2pa.C2paError as e:
            raise SigningError(f"the signed output has no readable manifest: {e}") from e
        failures = [
            f["code"]
            for f in results.get("activeManifest", {}).get("failure", [])
            if f.get("code") != UNTRUSTED_CODE
        ]
        if state == "Invalid" or failures:
            raise SigningError(f"the signed output does not validate ({state}): {failures}")
        return signed

    @staticmethod
    def _add_ingredient(builder: "c2pa.Builder", ing: Ingredient) -> None:
        mime = ing.mime or sniff_mime(ing.data)
        if mime is None:
            raise SigningError(f"ingredient {ing.title!r}: unknown image format ({len(ing.data)} bytes)")
        spec: dict[str, Any] = {"title": ing.title, "relationship": ing.relationship}
        if ing.role:
            spec["description"] = ing.role
        try:
            builder.add_ingredient(spec, mime, io.BytesIO(ing.data))
        except c2pa.C2paError as e:
            raise SigningError(f"ingredient {ing.title!r} ({mime}) could not be added: {e}") from e

    # -- verification ----------------------------------------------------------------------

    def verify(self, image_bytes: bytes, trust_anchors_pem: bytes | str | None = None) -> VerifyReport:
        """Reads and validates the C2PA manifest of an image (no watermark check here).

        Args:
            image_bytes (`bytes`): a PNG or JPEG file.
            trust_anchors_pem (`bytes` or `str`, *optional*): PEM root certificates to trust.

        Returns:
            A `VerifyReport` with ``c2pa`` and ``pixels_changed_after_signing`` filled in.

        Raises:
            InvalidImageError: if the bytes are not a decodable PNG/JPEG.
        """
        return verify_c2pa(image_bytes, trust_anchors_pem)


def read_manifest_store(reader: "c2pa.Reader") -> dict[str, Any]:
    """``reader.json()`` parsed, with genserve's own assertions taken from crJSON (see module doc)."""
    store = json.loads(reader.json())
    try:
        cr = json.loads(reader.crjson())
    except (c2pa.C2paError, ValueError):
        return store
    by_label = {m.get("label"): m.get("assertions") or {} for m in cr.get("manifests", [])}
    for label, manifest in (store.get("manifests") or {}).items():
        cr_assertions = by_label.get(label) or {}
        for assertion in manifest.get("assertions") or []:
            name = assertion.get("label", "")
            if name.startswith("org.genserve.") and isinstance(cr_assertions.get(name), dict):
                assertion["data"] = cr_assertions[name]
    return store


def _reader_context(trust_anchors_pem: bytes | str | None) -> "c2pa.Context":
    settings: dict[str, Any] = {"verify": {"verify_trust": True, "remote_manifest_fetch": False}}
    if trust_anchors_pem:
        pem = trust_anchors_pem.decode() if isinstance(trust_anchors_pem, bytes) else trust_anchors_pem
        settings["trust"] = {"trust_anchors": pem}
    return c2pa.Context.from_dict(settings)


def _summarise(store: dict[str, Any]) -> ManifestSummary | None:
    label = store.get("active_manifest")
    manifest = store.get("manifests", {}).get(label) if label else None
    if manifest is None:
        return None
    sig = manifest.get("signature_info") or {}
    gen_info = manifest.get("claim_generator_info") or []
    assertions = manifest.get("assertions") or []
    actions: list[dict[str, Any]] = []
    generation = None
    for a in assertions:
        if a.get("label", "").startswith("c2pa.actions"):
            actions.extend(a.get("data", {}).get("actions", []))
        elif a.get("label") == GENERATION_ASSERTION_LABEL:
            generation = a.get("data")
    ingredients = []
    for ing in manifest.get("ingredients") or []:
        ingredients.append(
            IngredientSummary(
                title=ing.get("title"),
                format=ing.get("format"),
                relationship=ing.get("relationship"),
                description=ing.get("description"),
                has_manifest=bool(ing.get("active_manifest")),
                validation_state=_ingredient_state(ing),
            )
        )
    generator = None
    if gen_info:
        generator = " ".join(filter(None, [gen_info[0].get("name"), gen_info[0].get("version")]))
    return ManifestSummary(
        label=label,
        title=manifest.get("title"),
        claim_generator=generator or manifest.get("claim_generator"),
        signature_issuer=sig.get("issuer"),
        signature_common_name=sig.get("common_name"),
        signature_alg=sig.get("alg"),
        signed_at=sig.get("time"),
        assertions=[a.get("label") for a in assertions],
        actions=actions,
        generation=generation,
        ingredients=ingredients,
    )


def _ingredient_state(ing: dict[str, Any]) -> str | None:
    if not ing.get("active_manifest"):
        return None
    results = (ing.get("validation_results") or {}).get("activeManifest") or {}
    failures = [f.get("code") for f in results.get("failure", []) if f.get("code") != UNTRUSTED_CODE]
    return "Invalid" if failures else "Valid"


def verify_c2pa(image_bytes: bytes, trust_anchors_pem: bytes | str | None = None) -> VerifyReport:
    """The C2PA half of verification (see `C2paSigner.verify`); needs no credentials."""
    return verify_c2pa_with_image(image_bytes, trust_anchors_pem)[0]


def verify_c2pa_with_image(image_bytes: bytes, trust_anchors_pem: bytes | str | None = None):
    """`verify_c2pa`, also returning the decoded RGB ``PIL.Image`` (so callers decode once)."""
    # 1. The bytes must be an image we can decode; say so clearly when they are not.
    mime = sniff_mime(image_bytes) if image_bytes else None
    if mime not in SUPPORTED_MIMES:
        raise InvalidImageError(
            f"verify reads PNG and JPEG files; these bytes look like {mime or 'no known image format'}"
        )
    image = decode_image(image_bytes)
    report = VerifyReport(format=mime, width=image.width, height=image.height)

    # 2. Read the manifest store.
    try:
        reader = c2pa.Reader(mime, io.BytesIO(image_bytes), context=_reader_context(trust_anchors_pem))
    except c2pa.C2paError.ManifestNotFound:
        return report, image
    except c2pa.C2paError as e:
        # A manifest is there (or claimed) but cannot be parsed: present and invalid.
        report.c2pa = C2paReport(present=True, validation_state="Invalid", errors=[f"manifest unreadable: {e}"])
        return report, image
    with reader:
        try:
            store = read_manifest_store(reader)
        except (c2pa.C2paError, ValueError) as e:
            report.c2pa = C2paReport(present=True, validation_state="Invalid", errors=[f"manifest unreadable: {e}"])
            return report, image

    # 3. Interpret validation results.
    state = store.get("validation_state")
    active = (store.get("validation_results") or {}).get("activeManifest") or {}
    failures = active.get("failure") or []
    successes = active.get("success") or []
    codes = {f.get("code") for f in failures}
    errors = [f"{f.get('code')}: {f.get('explanation', '')}".strip() for f in failures]
    deltas = (store.get("validation_results") or {}).get("ingredientDeltas") or []
    for delta in deltas:
        for f in (delta.get("validationDeltas") or {}).get("failure", []):
            errors.append(f"ingredient {delta.get('ingredientAssertionURI', '?')}: {f.get('code')}")
    summary = _summarise(store)
    report.c2pa = C2paReport(
        present=True,
        valid=state in ("Valid", "Trusted"),
        trusted=state == "Trusted",
        validation_state=state,
        errors=errors,
        manifest=summary,
    )
    if codes & HASH_MISMATCH_CODES:
        report.pixels_changed_after_signing = True
    elif {s.get("code") for s in successes} & HASH_MATCH_CODES:
        report.pixels_changed_after_signing = False
    if report.c2pa.valid and summary and summary.generation:
        report.artifact_id = summary.generation.get("artifact_id")
    return report, image
