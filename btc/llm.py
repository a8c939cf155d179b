"""Plain-language explanations and follow-up chat through Gemini (google-genai).

Facts in, text out: this module imports no TensorFlow. The API key is read from the
`GEMINI_API_KEY` / `GOOGLE_API_KEY` environment variables only, is never a parameter, and is
never printed or logged. Images are sent only when the user opts in (`share_images=True`) and
then only as freshly encoded pixels: no file name, no metadata. Without a key, or when the call
fails, a deterministic template built from the same facts is returned, labelled as such.

The facts carry the prediction's status (`btc.ood`). An image rejected as out of distribution is
never explained as a finding: its explanation is a fixed refusal (Gemini is not asked), and the
chat is told only that the image was rejected and why, without class, probabilities or saliency;
one that may be a brain MRI from elsewhere (`ood_kind == "unfamiliar"`) is never called "not a brain".
An uncertain prediction is explained as an abstention: refer to a radiologist.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

# `ood_reason`s (set by `btc.ood.assess`) named to the user even when the image is only
# "unfamiliar": colour (a brain MRI with a coloured overlay may be one) and a CT check that fired
# on an image whose features are within the brain scans' (a CT, or an MRI in a harsh window)
COLOUR_REASON = "colour image"
CT_HINT = "the skull is bright, as on a CT scan"
NAMED_REASONS = (COLOUR_REASON, CT_HINT)
DEFAULT_MODEL = "gemini-2.5-flash"
KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
TEMPLATE_LABEL = "Template explanation — not AI-generated."
CLASS_WORDS = {
    "glioma": "glioma",
    "meningioma": "meningioma",
    "notumor": "no tumour",
    "pituitary": "pituitary tumour",
}
COLORMAP_WORDS = {
    "jet": "red/yellow marks the strongest evidence and dark blue none",
    "inferno": "bright yellow marks the strongest evidence and black none",
    "viridis": "yellow marks the strongest evidence and dark purple none",
}
SYSTEM_INSTRUCTION = (
    "You explain the output of a research brain-MRI classifier to clinicians. It is decision "
    "support, not a diagnosis: say so once. Use only the facts given; state the calibrated "
    "confidence and the runner-up class; describe highlighted regions exactly as given (the "
    "saliency map shows what the model used, not where a tumour is). Be concise (at most 120 "
    "words). Decline to give treatment or management advice and refer to the care team. "
    "If the status is REJECTED, the classifier did not analyse the image (not a brain MRI "
    "slice, or unlike the scans it was trained on, as the facts say): never describe a tumour, "
    "class or finding in it. If the status is UNCERTAIN, the "
    "classifier abstains: present no class as the answer; the scan needs a radiologist's reading."
)
STATUSES = ("predicted", "uncertain", "out_of_distribution")  # as btc.ood (no TensorFlow here)
REJECTED_TEXT = (
    "This does not look like a brain MRI slice{reason}, so btc did not analyse it: it was "
    "trained on 2-D brain MRI slices only and its output for other images is meaningless. "
    "No tumour finding can be read from this result. Upload a brain MRI slice (JPEG/PNG or MR "
    "DICOM); if this is one, ask a radiologist to read it."
)
UNFAMILIAR_TEXT = (
    "This image is unlike the brain MRI slices btc was trained on{reason}, so btc did not analyse "
    "it: its output would not be reliable. It may still be a brain MRI, from another scanner, "
    "sequence, orientation or crop, so nothing can be read from this result either way: a "
    "radiologist should read the scan. No tumour finding can be read from this result."
)


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the explanation may say: one prediction and where its saliency lies.

    Args:
        predicted: Predicted class name.
        probabilities: Calibrated probability per class.
        model: Model name (or `"ensemble"`).
        saliency_method: Saliency method used for the map.
        saliency: Output of `btc.explain.describe_map` (region, shares); may be empty.
        colormap: Colormap of the displayed overlay.
        status: `"predicted"`, `"uncertain"` or `"out_of_distribution"` (`btc.ood`).
        ood_reason: Why an image was rejected (e.g. `COLOUR_REASON`).
        ood_kind: For a rejected image, `"not_brain_mri"` (btc is sure) or `"unfamiliar"` (it may
            be a brain MRI from elsewhere; never told it is not one).
        confidence_threshold: The confidence below which the classifier abstains.
    """

    predicted: str
    probabilities: dict[str, float]
    model: str = "ensemble"
    saliency_method: str = "gradcam"
    saliency: dict = dataclasses.field(default_factory=dict)
    colormap: str = "jet"
    status: str = "predicted"
    ood_reason: str | None = None
    confidence_threshold: float | None = None
    ood_kind: str | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"`status` must be one of {list(STATUSES)}. Received: status={self.status!r}")  # fmt: skip

    @classmethod
    def from_record(cls, record: dict, model: str, method: str = "gradcam",
                    saliency: dict | None = None, colormap: str = "jet") -> Facts:  # fmt: skip
        """The facts of a `btc.predict` record (status and thresholds included)."""
        return cls(record["class"], record["probabilities"], model, method, saliency or {},
                   colormap, record.get("status", "predicted"), record.get("ood_reason"),
                   (record.get("thresholds") or {}).get("confidence"), record.get("ood_kind"))  # fmt: skip

    @property
    def rejected(self) -> bool:
        return self.status == "out_of_distribution"

    @property
    def unfamiliar(self) -> bool:
        """Rejected, but possibly a brain MRI from elsewhere: never call it "not a brain"."""
        return self.rejected and self.ood_kind == "unfamiliar"

    @property
    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.predicted])

    @property
    def runner_up(self) -> tuple[str, float]:
        return next((c, p) for c, p in self.ranked if c != self.predicted)


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Text for the user, where it came from (`"gemini"` or `"template"`) and any error."""

    text: str
    source: str
    error: str | None = None


def confidence_words(p: float) -> str:
    """Plain wording of a calibrated probability."""
    if p >= 0.95:
        return "very high"
    if p >= 0.8:
        return "high"
    if p >= 0.6:
        return "moderate"
    return "low — treat as uncertain"


def describe_saliency(facts: Facts) -> str:
    """One sentence on where the saliency mass lies, in the overlay's colour language."""
    s = facts.saliency
    if not s:
        return "No saliency map was computed."
    colours = COLORMAP_WORDS.get(facts.colormap, "brighter colours mark stronger evidence")
    return (
        f"The {facts.saliency_method} map ({colours}) concentrates in the {s['region']} part of "
        f"the image; {s['left_share']:.0%} of its mass lies in the image's left half and "
        f"{s['upper_share']:.0%} in the upper half; the hottest 10% of pixels hold "
        f"{s['top10_area_mass']:.0%} of it."
    )


def _reason(facts: Facts) -> str:
    """The rejection's reason in parentheses; for an unfamiliar image only `NAMED_REASONS` (the
    text already says the rest)."""
    shown = facts.ood_reason and (not facts.unfamiliar or facts.ood_reason in NAMED_REASONS)
    return f" ({facts.ood_reason})" if shown else ""


def _abstention(facts: Facts) -> str:
    limit = f" {facts.confidence_threshold:.1%}" if facts.confidence_threshold is not None else ""
    return (
        f"Status: UNCERTAIN — the classifier abstains: its calibrated confidence "
        f"({facts.confidence:.1%}) is below the threshold{limit} fitted on validation scans for a "
        "low error rate, so it gives no answer and the scan should be read by a radiologist."
    )


def build_prompt(facts: Facts) -> str:
    """The user prompt: the facts only (no file name, no patient data).

    A rejected image's prompt holds only the rejection: no class, probability or saliency.
    """
    if facts.unfamiliar:
        return (
            f"Status: REJECTED — the input is unlike the brain MRI slices the classifier was "
            f"trained on{_reason(facts)}; it may still be a brain MRI from another scanner or "
            "protocol. The classifier's output is unreliable for it and is withheld. Explain "
            "briefly that the image was not analysed, that no finding can be read from it, and "
            "that a radiologist should read it. Do not say it is not a brain MRI."
        )
    if facts.rejected:
        return (
            f"Status: REJECTED — the input does not look like a brain MRI slice{_reason(facts)}. "
            "The classifier's output is meaningless for it and is withheld. Explain briefly that "
            "the image was not analysed and no finding can be read from it."
        )
    runner, runner_p = facts.runner_up
    probs = ", ".join(f"{CLASS_WORDS.get(c, c)} {p:.1%}" for c, p in facts.ranked)
    if facts.status == "uncertain":
        return (
            f"Classifier: {facts.model}. {_abstention(facts)} For transparency only, its "
            f"probabilities were: {probs}. {describe_saliency(facts)} Explain for a clinician "
            "that the classifier abstained on this scan; do not present any class as the answer."
        )
    return (
        f"Classifier: {facts.model}. Predicted class: {CLASS_WORDS.get(facts.predicted, facts.predicted)} "
        f"with calibrated probability {facts.confidence:.1%} ({confidence_words(facts.confidence)} "
        f"confidence). Runner-up: {CLASS_WORDS.get(runner, runner)} at {runner_p:.1%}. "
        f"All classes: {probs}. {describe_saliency(facts)} "
        "Explain this result for a clinician in plain language."
    )


def template_explanation(facts: Facts) -> str:
    """A deterministic explanation from the same facts, for when Gemini is unavailable."""
    if facts.rejected:
        text = UNFAMILIAR_TEXT if facts.unfamiliar else REJECTED_TEXT
        return f"[{TEMPLATE_LABEL}]\n" + text.format(reason=_reason(facts))
    runner, runner_p = facts.runner_up
    if facts.status == "uncertain":
        return (
            f"[{TEMPLATE_LABEL}]\nUncertain: refer to a radiologist. {_abstention(facts)} Its most "
            f"probable class was {CLASS_WORDS.get(facts.predicted, facts.predicted)} "
            f"({facts.confidence:.1%}), then {CLASS_WORDS.get(runner, runner)} ({runner_p:.1%}): "
            "not a result. This is research decision support, not a diagnosis."
        )
    return (
        f"[{TEMPLATE_LABEL}]\n"
        f"The {facts.model} model suggests **{CLASS_WORDS.get(facts.predicted, facts.predicted)}** with a "
        f"calibrated probability of {facts.confidence:.1%} ({confidence_words(facts.confidence)} "
        f"confidence). The runner-up is {CLASS_WORDS.get(runner, runner)} at {runner_p:.1%}. "
        f"{describe_saliency(facts)} The map shows what the model relied on, not the tumour's "
        "extent. This is research decision support, not a diagnosis; it gives no treatment "
        "advice — please discuss the scan with the care team."
    )


def api_key() -> str | None:
    """The Gemini API key from the environment, or `None` (never logged)."""
    return next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)


def make_client(timeout_s: float = 20.0, retries: int = 2, base_url: str | None = None):
    """A google-genai client with a timeout and bounded retries, or `None` without a key.

    Args:
        timeout_s: Per-request timeout in seconds.
        retries: Retries after the first attempt (on 408/429/5xx and transport errors).
        base_url: Override of the API endpoint (tests point it at a local stub).
    """
    key = api_key()
    if key is None:
        return None
    from google import genai
    from google.genai import types

    options = types.HttpOptions(
        timeout=int(timeout_s * 1000),
        base_url=base_url,
        retry_options=types.HttpRetryOptions(
            attempts=1 + retries, initial_delay=0.2, max_delay=2.0
        ),
    )
    return genai.Client(api_key=key, http_options=options)


def encode_png(image: np.ndarray) -> bytes:
    """Encode pixels as a fresh PNG: no file name, no EXIF or other metadata travels."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _image_parts(images: Sequence[np.ndarray]):
    from google.genai import types

    return [types.Part.from_bytes(data=encode_png(img), mime_type="image/png") for img in images]


def _generate(client, model: str, contents) -> str:
    from google.genai import types

    config = types.GenerateContentConfig(
        system_instruction=SYSTEM_INSTRUCTION, temperature=0.2, max_output_tokens=400
    )
    response = client.models.generate_content(model=model, contents=contents, config=config)
    text = (response.text or "").strip()
    if not text:
        raise RuntimeError("Gemini returned no text")
    return text


def _failure(exc: Exception) -> str:
    name = type(exc).__name__
    code = getattr(exc, "code", None)
    return f"Gemini unavailable ({name}{f' {code}' if code else ''}); showing the template instead."


def explain(
    facts: Facts,
    images: Sequence[np.ndarray] = (),
    share_images: bool = False,
    model: str = DEFAULT_MODEL,
    client=None,
    timeout_s: float = 20.0,
    retries: int = 2,
) -> Explanation:
    """Explain one prediction in plain language (Gemini, or the template as a fallback).

    Args:
        facts: The prediction and saliency summary.
        images: The scan and/or overlay as arrays; sent only if `share_images` is true.
        share_images: The user's explicit opt-in to send images (off by default).
        model: Gemini model name.
        client: A google-genai client (default: `make_client`; `None` without a key).
        timeout_s: Request timeout when the client is made here.
        retries: Bounded retries when the client is made here.

    Returns:
        An `Explanation`; `source="template"` whenever Gemini was not used. A rejected image
        (`facts.status == "out_of_distribution"`) always gets the fixed refusal: Gemini is not
        asked and no image is sent.
    """
    if facts.rejected:
        return Explanation(template_explanation(facts), "template")
    client = client or make_client(timeout_s, retries)
    if client is None:
        return Explanation(template_explanation(facts), "template", "no GEMINI_API_KEY set")
    contents = [build_prompt(facts)]
    if share_images and images:
        contents += _image_parts(images)
    try:
        return Explanation(_generate(client, model, contents), "gemini")
    except Exception as exc:  # network, HTTP, quota: the user still gets an explanation
        log.warning("Gemini explanation failed: %s", type(exc).__name__)
        return Explanation(template_explanation(facts), "template", _failure(exc))


def chat(
    history: list[dict],
    question: str,
    facts: Facts,
    model: str = DEFAULT_MODEL,
    client=None,
    timeout_s: float = 20.0,
    retries: int = 2,
) -> tuple[str, list[dict]]:
    """Answer a follow-up question, keeping the conversation history.

    Args:
        history: Earlier turns as `{"role": "user"|"model", "text": ...}` dicts.
        question: The new question.
        facts: The prediction being discussed (restated to the model every turn).
        model: Gemini model name.
        client: A google-genai client (default: `make_client`).
        timeout_s: Request timeout when the client is made here.
        retries: Bounded retries when the client is made here.

    Returns:
        `(answer, new_history)`; the answer explains the failure when Gemini is unavailable.
    """
    from google.genai import types

    question = question.strip()
    if not question:
        raise ValueError("`question` must not be empty. Received: question=''")
    client = client or make_client(timeout_s, retries)
    if client is None:
        answer = f"[{TEMPLATE_LABEL}] Chat needs a GEMINI_API_KEY. {template_explanation(facts)}"
    else:
        contents = [types.Content(role="user", parts=[types.Part(text=f"Facts: {build_prompt(facts)}")]),
                    types.Content(role="model", parts=[types.Part(text="Understood.")])]  # fmt: skip
        contents += [types.Content(role=turn["role"], parts=[types.Part(text=turn["text"])])
                     for turn in history]  # fmt: skip
        contents.append(types.Content(role="user", parts=[types.Part(text=question)]))
        try:
            answer = _generate(client, model, contents)
        except Exception as exc:
            log.warning("Gemini chat failed: %s", type(exc).__name__)
            answer = _failure(exc)
    return answer, [*history, {"role": "user", "text": question}, {"role": "model", "text": answer}]
