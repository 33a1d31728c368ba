"""What plugins declare for the core (``encodes_text``, ``prompt_templates``, ``perceives``, examples)
and the generic analyses that read those declarations instead of modality names."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import numpy as np
import pytest

from anchorbind.errors import InputError
from anchorbind.evaluation.evaluate import headline
from anchorbind.evaluation.report import similarity_pairs
from anchorbind.evaluation.schema import carried_mask, perceived_groups
from anchorbind.metrics import build_prompts
from anchorbind.modalities.audio.plugin import AudioPlugin
from anchorbind.modalities.depth.plugin import DepthPlugin
from anchorbind.modalities.text.plugin import TextPlugin
from anchorbind.pipelines.world.config import ATTRIBUTES
from anchorbind.plugin import ModalityPlugin
from anchorbind.registry import ANCHOR_MODALITY, caption_modality, plugin_class_or_none, text_modalities
from tests.conftest import REPO


def _imu_class() -> type[ModalityPlugin]:
    """The out-of-tree example's class, loaded from its file (nothing installed or registered)."""
    path = REPO / "examples" / "anchorbind-imu" / "anchorbind_imu" / "plugin.py"
    spec = importlib.util.spec_from_file_location("_anchorbind_imu_example_plugin", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.ImuPlugin


PLUGIN_CLASSES = {"text": TextPlugin, "audio": AudioPlugin, "depth": DepthPlugin, "imu_conv": _imu_class()}


def _loader(cls: type[ModalityPlugin]) -> Any:
    """What turns raw inputs into samples: the plugin's processor, or the plugin itself."""
    if getattr(cls, "Processor", None) is not None and hasattr(cls, "create_processor"):
        return cls.create_processor()
    return cls(embed_dim=8)


@pytest.mark.parametrize("name", sorted(PLUGIN_CLASSES))
def test_example_inputs_load_and_bad_inputs_are_refused(name: str) -> None:
    cls = PLUGIN_CLASSES[name]
    loader = _loader(cls)
    good = cls.example_inputs()
    assert len(good) >= 2
    samples = [loader.load(source) for source in good]
    for source in good:
        loader.load(source, train=True)
    loader.collate(samples)
    if not isinstance(samples[0], str):  # different content: no two samples are the same
        arrays = [np.asarray(s) for s in samples]
        assert all(not np.array_equal(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:])
    bad = cls.example_bad_inputs()
    assert bad
    for source in bad:
        with pytest.raises(InputError):
            loader.load(source)


def test_built_in_plugins_declare_what_the_core_needs() -> None:
    assert TextPlugin.encodes_text and not AudioPlugin.encodes_text and not DepthPlugin.encodes_text
    for cls in (AudioPlugin, DepthPlugin):
        assert len(cls.prompt_templates) > 1
        build_prompts(["cube"], cls.prompt_templates)  # one {} each
    assert AudioPlugin.perceives == ("audio",) and DepthPlugin.perceives == ("visual",)
    # the world writes exactly these observability values
    assert {spec.observability for spec in ATTRIBUTES.values()} == {"both", "visual", "audio"}


def test_caption_modality_is_the_plugin_that_encodes_text() -> None:
    assert text_modalities([ANCHOR_MODALITY, "audio", "text", "depth"]) == ["text"]
    assert caption_modality(["audio", "text"]) == "text"
    assert caption_modality([ANCHOR_MODALITY, "audio", "depth"]) is None
    assert caption_modality(["no_such_plugin"]) is None
    assert plugin_class_or_none(ANCHOR_MODALITY) is None and plugin_class_or_none("no_such_plugin") is None


def _world_record(states: dict[str, bool], *, carried_by: bool = True) -> dict[str, Any]:
    record: dict[str, Any] = {
        "attributes": {name: spec.values[0] for name, spec in ATTRIBUTES.items()},
        "observability": {name: spec.observability for name, spec in ATTRIBUTES.items()},
        "caption_states": states,
    }
    if carried_by:
        record["carried_by"] = {name: list(spec.carried_by) for name, spec in ATTRIBUTES.items()}
    return record


def test_carried_mask_follows_the_worlds_keys_as_before() -> None:
    states = {name: name in ("category", "colour") for name in ATTRIBUTES}
    meta = [_world_record(states)]
    for modality in (ANCHOR_MODALITY, "audio", "depth"):
        for name, spec in ATTRIBUTES.items():
            assert bool(carried_mask(meta, [0], modality, name)[0]) == (modality in spec.carried_by), (modality, name)
    for name in ATTRIBUTES:  # the caption carries what it states
        assert bool(carried_mask(meta, [0], "text", name)[0]) == states[name]


def test_carried_mask_without_carried_by_uses_what_plugins_perceive() -> None:
    meta = [_world_record({}, carried_by=False)]
    meta[0].pop("caption_states")
    carried = {m: {a for a in ATTRIBUTES if carried_mask(meta, [0], m, a)[0]}
               for m in (ANCHOR_MODALITY, "audio", "depth", "text", "no_such_plugin")}
    # the image and the audio get exactly the world's carried_by back from observability alone
    assert carried[ANCHOR_MODALITY] == {a for a, s in ATTRIBUTES.items() if ANCHOR_MODALITY in s.carried_by}
    assert carried["audio"] == {a for a, s in ATTRIBUTES.items() if "audio" in s.carried_by}
    assert carried["depth"] == {a for a, s in ATTRIBUTES.items() if s.observability in ("visual", "both")}
    # nothing declared (a caption without caption_states, an unknown plugin): nothing known against it
    assert carried["text"] == carried["no_such_plugin"] == set(ATTRIBUTES)
    assert perceived_groups("text") is None and perceived_groups(ANCHOR_MODALITY) == ("visual",)


def test_similarity_pairs_come_from_the_run() -> None:
    modalities = [ANCHOR_MODALITY, "text", "audio", "depth"]
    kinds = {("text", "audio"): "emergent", ("text", "depth"): "emergent", ("audio", "depth"): "emergent"}
    retrieval = {f"{a}->{b}": {"kind": k} for (a, b), k in kinds.items()}
    retrieval.update({f"{b}->{a}": {"kind": k} for (a, b), k in kinds.items()})
    retrieval.update({f"{ANCHOR_MODALITY}->{m}": {"kind": "trained"} for m in modalities[1:]})
    pairs = similarity_pairs(modalities, retrieval)
    assert pairs == [("text", "audio"), (ANCHOR_MODALITY, "text"), (ANCHOR_MODALITY, "audio"),
                     (ANCHOR_MODALITY, "depth")]
    two = similarity_pairs([ANCHOR_MODALITY, "audio", "imu"], {"audio->imu": {"kind": "direct"}})
    assert two == [("audio", "imu"), (ANCHOR_MODALITY, "audio"), (ANCHOR_MODALITY, "imu")]


def test_headline_shows_caption_queries_both_ways() -> None:
    pairs = ["audio->depth", "depth->audio", "audio->text", "text->audio"]
    metrics = {"modalities": {ANCHOR_MODALITY: 4, "text": 4, "audio": 4, "depth": 4},
               "retrieval": {p: {"kind": "emergent", "category/R@1": 0.5} for p in pairs}}
    shown = {key.split()[1] for key in headline(metrics)}
    assert shown == {"audio->depth", "audio->text", "text->audio"}
    assert {key.split()[1] for key in headline(metrics, text_queries=[])} == {"audio->depth", "audio->text"}
