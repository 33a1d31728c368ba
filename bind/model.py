"""`BindModel`: the frozen image anchor plus any set of modality plugins, in one space."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from anchorbind.anchor import AnchorConfig, FrozenAnchor
from anchorbind.anchor_config import WEIGHT_MODES
from anchorbind.atomic import write_directory
from anchorbind.config import config_to_dict, from_dict
from anchorbind.errors import ConfigError, ModelFileError, UnknownModalityError
from anchorbind.hub import resolve_model_dir, upload_folder
from anchorbind.model_card import MODEL_CARD_NAME, render_model_card
from anchorbind.plugin import ModalityPlugin
from anchorbind.processor import Processor, move_to_device
from anchorbind.registry import ANCHOR_MODALITY, create_plugin, list_modalities

__all__ = ["IMPORTER_ENTRY_POINT_GROUP", "BindModel", "ModelConfig"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DEPENDENCIES_DIR = "deps"
"""Where a saved model keeps the local files its config names (anchor weights, a backbone folder)."""
FORMAT_VERSION = 1
IMPORTER_ENTRY_POINT_GROUP = "anchorbind.importers"
LORA_BASE_LAYER = "base_layer"


@dataclass
class ModelConfig:
    """The anchor's config and one config mapping per plugin modality (validated by the plugin).

    Attributes:
        anchor: the frozen image encoder.
        modalities: ``{name: plugin config}``.
        init_from: a saved model (folder or Hub id) to start from, e.g. an imported ImageBind:
            its anchor and plugins are rebuilt with its weights, ``modalities`` entries are
            merged over its saved plugin configs (``{audio: {tuning: lora}}`` adds adapters to
            its audio trunk; ``{thermal: null}`` leaves a plugin out; a new name adds a fresh
            plugin), and ``anchor`` must be left at its default (the anchor is the saved one).
    """

    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    modalities: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    init_from: str | None = None


class BindModel(nn.Module):
    """A frozen image anchor and the plugins bound to it.

    Example::

        model = BindModel.from_config({"modalities": {"text": {}, "audio": {}}})
        emb = model.embed({"image": ["cat.jpg"], "text": ["a cat"], "audio": ["meow.wav"]})
        emb["text"] @ emb["image"].T   # cosine similarities
    """

    def __init__(self, anchor: FrozenAnchor, plugins: Mapping[str, ModalityPlugin]) -> None:
        super().__init__()
        self.anchor = anchor
        self.plugins = nn.ModuleDict(dict(plugins))
        for name, plugin in self.plugins.items():
            if plugin.embed_dim != anchor.embed_dim:
                raise ConfigError(
                    f"plugin '{name}' projects to {plugin.embed_dim} dims but the anchor has {anchor.embed_dim}"
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: ModelConfig | Mapping[str, Any] | None = None) -> BindModel:
        """Build the anchor and every plugin named in ``config.modalities``."""
        if not isinstance(config, ModelConfig):
            config = from_dict(ModelConfig, config, where="model")
        if config.init_from:
            if config.anchor != AnchorConfig():
                raise ConfigError("model.anchor: leave it out with model.init_from; the anchor is the saved model's")
            return cls.from_pretrained(config.init_from, modality_overrides=config.modalities)
        anchor = FrozenAnchor(config.anchor)
        plugins = {
            name: create_plugin(name, plugin_cfg or {}, embed_dim=anchor.embed_dim)
            for name, plugin_cfg in config.modalities.items() if plugin_cfg is not None
        }
        return cls(anchor, plugins)

    @classmethod
    def from_external(cls, format_name: str, source: Any, **kwargs: Any) -> BindModel:
        """Convert another framework's checkpoint with the importer registered as ``format_name``.

        Importers are entry points in the group ``anchorbind.importers`` (``imagebind`` is
        built in: :func:`anchorbind.pipelines.imagebind.from_imagebind`); a package can add its
        own the way it adds a modality.

        Raises:
            ConfigError: no importer of that name is installed (the installed ones are listed).
        """
        from importlib.metadata import entry_points

        found = {ep.name: ep for ep in entry_points(group=IMPORTER_ENTRY_POINT_GROUP)}
        if format_name not in found:
            raise ConfigError(f"no checkpoint importer {format_name!r}; installed: {sorted(found)}")
        return found[format_name].load()(source, **kwargs)

    @classmethod
    def from_imagebind(cls, source: Any, out: str | os.PathLike[str] | None = None, **kwargs: Any) -> BindModel:
        """ImageBind's ``imagebind_huge.pth`` (or a state dict, or a reduced checkpoint) as a BindModel.

        ``from_external("imagebind", source, out=out, **kwargs)``; the weights are CC-BY-NC 4.0.
        See :func:`anchorbind.pipelines.imagebind.from_imagebind` and ``docs/imagebind.md``.
        """
        return cls.from_external("imagebind", source, out=out, **kwargs)

    @property
    def config(self) -> ModelConfig:
        return ModelConfig(
            anchor=self.anchor.config,
            modalities={name: p.config_dict() for name, p in self.plugins.items()},
        )

    @property
    def modalities(self) -> list[str]:
        """``["image", *plugins]``."""
        return [ANCHOR_MODALITY, *self.plugins.keys()]

    @property
    def embed_dim(self) -> int:
        return self.anchor.embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.anchor.parameters()).device

    def plugin(self, name: str) -> ModalityPlugin:
        """The plugin for ``name``; an unknown name raises :class:`UnknownModalityError`."""
        if name in self.plugins:
            return self.plugins[name]
        raise UnknownModalityError(
            f"modality {name!r} is not part of this model; it has {self.modalities} "
            f"(registered plugins: {list_modalities()})"
        )

    def processor(self, name: str) -> Processor:
        """What reads and collates ``name``: the anchor's ImageProcessor for ``image``, else the plugin's.

        A :class:`~anchorbind.processor.Processor` holds no model, so it is what data loaders
        (and their worker processes) get; encode its batches with :meth:`encoder`.
        """
        return self.encoder(name).processor

    def encoder(self, name: str) -> FrozenAnchor | ModalityPlugin:
        """The module that embeds ``name``'s batches: the anchor for ``image``, else its plugin.

        It has ``forward`` (embeddings) and ``forward_with_features`` (native features too).
        """
        return self.anchor if name == ANCHOR_MODALITY else self.plugin(name)

    # ------------------------------------------------------------------ inference
    def load(self, modality: str, sources: Sequence[Any], *, train: bool = False) -> Any:
        """Read and collate raw inputs of one modality into a batch."""
        return self.processor(modality).load_batch(list(sources), train=train)

    def encode(self, modality: str, batch: Any) -> torch.Tensor:
        """Embed an already collated batch of one modality."""
        return self.encoder(modality)(move_to_device(batch, self.device))

    @torch.inference_mode()
    def embed(self, inputs: Mapping[str, Any], *, batch_size: int = 64) -> dict[str, torch.Tensor]:
        """Embed raw inputs (lists of paths/bytes/arrays/strings) or collated batches.

        Runs under ``torch.inference_mode()``: no autograd graph is kept and the outputs do not
        require grad (train through :meth:`forward` or :meth:`encode`).

        Args:
            inputs: ``{modality: inputs}``; a list or tuple is read with the modality's loader,
                ``batch_size`` inputs at a time, anything else is taken as a collated batch.
            batch_size: inputs read and encoded at once (memory stays bounded for a long list).
                For a collection on disk, ``anchorbind embed`` also decodes in worker processes
                and writes a resumable store.

        Returns:
            ``{modality: (N, embed_dim) L2-normalised tensor}``.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        out: dict[str, torch.Tensor] = {}
        for name, value in inputs.items():
            if not isinstance(value, (list, tuple)):
                out[name] = self.encode(name, value)
                continue
            processor, values = self.processor(name), list(value)
            if not values:
                out[name] = torch.empty(0, self.embed_dim, device=self.device)
                continue
            chunks = [self.encode(name, processor.load_batch(values[i:i + batch_size]))
                      for i in range(0, len(values), batch_size)]
            out[name] = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return out

    # ------------------------------------------------------------------ training
    def forward(self, batch: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Embed every modality of a loader batch (see ``anchorbind.data.loader``), for training.

        Rows missing a modality (``batch["mask"][m]`` False) get zero vectors, so every embedding
        tensor has the batch's full length and rows stay aligned across modalities. The anchor's
        embeddings come from the cache (``batch["image_embedding"]``) when present, else the
        frozen anchor runs live (without autograd).

        Returns:
            ``{"embeddings": {m: (B, D)}, "masks": {m: (B,) bool}, "logit_scales": {m: scalar},
            "native": {m: scalar}}`` — ``native`` holds each plugin's auxiliary objective when its
            ``native_loss_weight`` is positive (already multiplied by that weight).
        """
        masks_in: Mapping[str, torch.Tensor] = batch["mask"]
        size = len(batch["__key__"])
        embeddings: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        native: dict[str, torch.Tensor] = {}
        device = self.device

        def scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            full = values.new_zeros(size, values.shape[-1])
            return full.index_copy(0, mask.nonzero().squeeze(1), values)

        if "image_embedding" in batch:
            mask = masks_in["image_embedding"].to(device)
            embeddings[ANCHOR_MODALITY] = batch["image_embedding"].to(device).float() * mask[:, None]
            masks[ANCHOR_MODALITY] = mask
        elif ANCHOR_MODALITY in batch:
            mask = masks_in[ANCHOR_MODALITY].to(device)
            embeddings[ANCHOR_MODALITY] = scatter(self.encode(ANCHOR_MODALITY, batch[ANCHOR_MODALITY]), mask)
            masks[ANCHOR_MODALITY] = mask
        for name, plugin in self.plugins.items():
            if name not in batch:
                continue
            mask = masks_in[name].to(device)
            inputs = move_to_device(batch[name], device)
            embeddings[name] = scatter(plugin(inputs), mask)
            masks[name] = mask
            weight = plugin.config.native_loss_weight
            if weight > 0:
                term = plugin.native_loss(inputs)
                if term is not None:
                    native[name] = weight * term
        scales = {name: plugin.logit_scale() for name, plugin in self.plugins.items()}
        return {"embeddings": embeddings, "masks": masks, "logit_scales": scales, "native": native}

    # ------------------------------------------------------------------ persistence
    def persistent_state_dict(self) -> dict[str, torch.Tensor]:
        """What ``model.safetensors`` stores: each plugin's ``persistent_state_dict()``.

        The anchor and frozen pretrained backbones are rebuilt from their configs on load, so
        they are not stored: a bound model is a few MB even when its text backbone is large.
        Trunks initialised at random are stored whole, frozen or LoRA-adapted.
        """
        return {f"plugins.{name}.{key}": value.detach().contiguous().cpu()
                for name, plugin in self.plugins.items() for key, value in plugin.persistent_state_dict().items()}

    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        training_config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        repo_id: str | None = None,
    ) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a model card ``README.md`` atomically into ``directory``.

        Args:
            training_config: the training run's config, shown in the card (the trainer passes it).
            metrics: ``metrics.json`` of ``anchorbind eval`` (or its ``headline`` block): the
                card's headline table.
            repo_id: the Hub id the card's "how to load" example names (default: ``directory``).

        The card (:mod:`anchorbind.model_card`) is documentation only: :meth:`from_pretrained`
        never reads it.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        def write(tmp: Path) -> None:
            self.write_model_files(tmp, training_config=training_config, metrics=metrics,
                                   load_name=repo_id or str(directory))

        return write_directory(directory, write)

    def write_model_files(self, folder: Path, *, training_config: Mapping[str, Any] | None = None,
                          metrics: Mapping[str, Any] | None = None, load_name: str | None = None) -> None:
        """Write this model's files into an existing (temporary) ``folder``: what
        :meth:`save_pretrained` writes before it moves the folder into place.

        Local files the config names (anchor weights given as a path, a plugin's local backbone
        folder: its ``path_fields``) are linked or copied into ``deps/`` and the saved config
        names them relative to the folder, so a saved model is self-contained and movable.
        """
        config = config_to_dict(self.config)
        config.pop("init_from", None)
        deps = folder / DEPENDENCIES_DIR
        if _is_local_path(self.anchor.config.weights):
            source = Path(self.anchor.config.weights).expanduser()
            config["anchor"]["weights"] = _bundle(source, deps / f"anchor{''.join(source.suffixes)}", folder)
        for name, plugin in self.plugins.items():
            for key in getattr(plugin, "path_fields", ()):
                value = config["modalities"][name].get(key)
                if isinstance(value, str) and _is_local_path(value):
                    source = Path(value).expanduser()
                    config["modalities"][name][key] = _bundle(source, deps / f"{name}.{key}{''.join(source.suffixes)}",
                                                              folder)
        meta = {"format": "anchorbind", "format_version": FORMAT_VERSION, "anchor_identity": self.anchor.identity,
                **config}
        save_file(self.persistent_state_dict(), str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
        (folder / MODEL_CARD_NAME).write_text(render_model_card(
            self, load_name=load_name or str(folder), training_config=training_config, metrics=metrics))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str = "Upload AnchorBind model",
        revision: str | None = None,
        training_config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> Any:
        """Upload this model to the Hugging Face Hub as ``repo_id`` (created if needed).

        The folder uploaded is exactly :meth:`save_pretrained`'s (``config.json``,
        ``model.safetensors``, ``README.md``), written to a temporary folder and handed to
        ``huggingface_hub``'s ``HfApi.create_repo(exist_ok=True)`` and ``HfApi.upload_folder``
        (:func:`anchorbind.hub.upload_folder`).

        Args:
            private: make a new repository private (``None``: the Hub's default).
            token: a Hub token (default: the logged-in one).
            training_config, metrics: shown in the model card, as in :meth:`save_pretrained`.
            dry_run: prepare the folder and return its path without uploading (the caller deletes it).

        Returns:
            The ``CommitInfo`` of the upload, or the prepared folder when ``dry_run``.
        """
        if dry_run:
            folder = Path(tempfile.mkdtemp(prefix="anchorbind-push-")) / "model"
            return self.save_pretrained(folder, training_config=training_config, metrics=metrics, repo_id=repo_id)
        with tempfile.TemporaryDirectory(prefix="anchorbind-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "model", training_config=training_config, metrics=metrics,
                                          repo_id=repo_id)
            return upload_folder(folder, repo_id, private=private, token=token, commit_message=commit_message,
                                 revision=revision)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        map_location: str | torch.device = "cpu",
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        modality_overrides: Mapping[str, Mapping[str, Any] | None] | None = None,
    ) -> BindModel:
        """Rebuild a model saved by :meth:`save_pretrained` (a folder, or a Hub id); nothing is unpickled.

        ``modality_overrides`` (what ``model.init_from`` passes) are merged over the saved plugin
        configs before building: ``{name: None}`` drops a plugin, a new name adds a fresh one,
        and switching a trunk to ``tuning: lora`` loads the saved weights into the adapted
        layers' base (adapters start at zero, as LoRA's do).

        ``directory`` is a local folder when one exists at that path; otherwise a Hub id such as
        ``"org/name"`` is fetched with ``huggingface_hub.snapshot_download`` (``config.json``,
        ``model.safetensors`` and ``README.md`` only) at ``revision``, through the Hub cache
        (``cache_dir``, default ``HF_HUB_CACHE``) and honouring ``HF_HUB_OFFLINE``. The model card
        is never read.

        Raises:
            ModelFileError: naming the path or Hub id: the model is not cached while offline, the
                repository or revision does not exist, the folder or a file is missing or unreadable,
                ``config.json`` is not JSON or not an AnchorBind config, the safetensors file is
                corrupt, or its tensors do not match the config (missing, unexpected, mis-shaped).
            ConfigError: the saved config itself is invalid (unknown key or value).
        """
        directory = resolve_model_dir(directory, (CONFIG_NAME, WEIGHTS_NAME, MODEL_CARD_NAME, f"{DEPENDENCIES_DIR}/*"),
                                      revision=revision, cache_dir=cache_dir, token=token)
        if not directory.is_dir():
            raise ModelFileError(f"{directory}: no such model folder")
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise ModelFileError(f"{directory}: not a saved BindModel (no {CONFIG_NAME})")
        try:
            meta = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelFileError(f"{config_path}: unreadable config ({err})") from err
        if not isinstance(meta, dict) or meta.get("format") != "anchorbind":
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ModelFileError(f"{config_path}: not an AnchorBind config (format={found!r})")
        if "anchor" not in meta or "modalities" not in meta:
            raise ModelFileError(f"{config_path}: missing 'anchor' or 'modalities'")
        anchor_cfg, modalities = _resolve_local_paths(directory, meta["anchor"], meta["modalities"])
        saved_names = set(modalities)
        for name, override in (modality_overrides or {}).items():
            if override is None:
                modalities.pop(name, None)
            else:
                modalities[name] = {**(modalities.get(name) or {}), **override}
        model = cls.from_config({"anchor": anchor_cfg, "modalities": modalities})
        if model.anchor.identity != meta.get("anchor_identity"):
            raise ModelFileError(
                f"{directory}: saved with anchor {meta.get('anchor_identity')} but its config now builds "
                f"{model.anchor.identity}; the weights would not match"
            )
        weights_path = directory / WEIGHTS_NAME
        if not weights_path.is_file():
            raise ModelFileError(f"{weights_path}: missing weights file")
        try:
            state = load_file(str(weights_path), device=str(map_location))
        except (OSError, SafetensorError) as err:
            raise ModelFileError(f"{weights_path}: unreadable safetensors file ({err})") from err
        expected = model.persistent_state_dict()
        if modality_overrides:
            state = _onto_lora_base_layers(state, expected)
            kept = tuple(f"plugins.{name}." for name in saved_names)
            state = {k: v for k, v in state.items() if k in expected or not k.startswith(kept) or
                     k.split(".", 2)[1] in modalities}
            fresh = {k for k in expected if "lora_" in k or not k.startswith(kept)}
        else:
            fresh = set()
        missing = sorted(expected.keys() - state.keys() - fresh)
        unexpected = sorted(state.keys() - expected.keys())
        if missing or unexpected:
            raise ModelFileError(
                f"{weights_path}: weights do not match the config (missing {missing}, unexpected {unexpected})"
            )
        mis_shaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                      if k in state and tuple(state[k].shape) != tuple(v.shape)]
        if mis_shaped:
            raise ModelFileError(f"{weights_path}: tensors of the wrong shape for the config: {', '.join(mis_shaped)}")
        model.load_state_dict(state, strict=False)
        return model.to(map_location)


def _is_local_path(value: str) -> bool:
    """True for a config value naming an existing local file or folder (not a mode or a Hub id)."""
    if not value or value in WEIGHT_MODES or value == "packaged":
        return False
    return Path(value).expanduser().exists()


def _bundle(source: Path, target: Path, folder: Path) -> str:
    """Hard-link (or copy) ``source`` into ``target`` and return its path relative to ``folder``.

    A source already inside ``folder`` (an importer wrote it there) stays where it is.
    """
    if source.resolve().is_relative_to(folder.resolve()):
        return source.resolve().relative_to(folder.resolve()).as_posix()
    target.parent.mkdir(parents=True, exist_ok=True)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link_or_copy)
    else:
        link_or_copy(str(source), str(target))
    return target.relative_to(folder).as_posix()


def _resolve_local_paths(directory: Path, anchor: dict[str, Any], modalities: dict[str, Any]
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The saved configs with paths relative to the model folder (``deps/...``) made absolute."""
    from anchorbind.registry import plugin_class_or_none

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(f"{DEPENDENCIES_DIR}/") and (directory / value).exists():
            return str((directory / value).resolve())
        return value

    anchor = {**anchor, "weights": resolve(anchor.get("weights"))} if isinstance(anchor, dict) else anchor
    resolved: dict[str, Any] = {}
    for name, cfg in (modalities or {}).items():
        plugin_cls = plugin_class_or_none(name)
        fields = getattr(plugin_cls, "path_fields", ()) if plugin_cls is not None else ()
        resolved[name] = {k: resolve(v) if k in fields else v for k, v in cfg.items()} if isinstance(cfg, dict) else cfg
    return anchor, resolved


def _onto_lora_base_layers(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
                           ) -> dict[str, torch.Tensor]:
    """Rename saved weights of layers that now carry LoRA adapters (``x.qkv.weight`` -> ``x.qkv.base_layer.weight``)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in expected:
            head, _, leaf = key.rpartition(".")
            candidate = f"{head}.{LORA_BASE_LAYER}.{leaf}"
            if candidate in expected:
                key = candidate
        renamed[key] = value
    return renamed
