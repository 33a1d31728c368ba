"""Embedding arithmetic on a constructed space where the composed query is the only correct one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anchorbind.errors import InputError
from anchorbind.metrics import combine_embeddings, embedding_arithmetic

DIM = 8  # dims 0-2: scene, 3-5: sound source, 6-7: noise


def scene(s: int) -> torch.Tensor:
    return torch.eye(DIM)[s]


def sound(a: int) -> torch.Tensor:
    return torch.eye(DIM)[3 + a]


def build_world():
    pairs = list(itertools.product(range(3), range(3)))
    gallery = F.normalize(torch.stack([scene(s) + sound(a) for s, a in pairs]), dim=1)
    gallery_scene = np.array([s for s, _ in pairs])
    gallery_sound = np.array([a for _, a in pairs])
    # Each image also hints at a *different* sound and each audio at a different scene, so a
    # single modality retrieves the wrong item first and only the sum finds the right one.
    image_targets, audio_targets = gallery_scene.copy(), gallery_sound.copy()
    images = F.normalize(torch.stack([scene(s) + 0.2 * sound((a + 1) % 3) for s, a in pairs]), dim=1)
    audios = F.normalize(torch.stack([sound(a) + 0.2 * scene((s + 1) % 3) for s, a in pairs]), dim=1)
    return images, audios, gallery, image_targets, audio_targets, gallery_scene, gallery_sound


def brute_accuracy(queries, gallery, image_targets, audio_targets, gallery_scene, gallery_sound, k):
    hits = []
    for i, row in enumerate((queries @ gallery.T).tolist()):
        correct = [
            gallery_scene[j] == image_targets[i] and gallery_sound[j] == audio_targets[i] for j in range(len(row))
        ]
        order = sorted(range(len(row)), key=lambda j, row=row, correct=correct: (-row[j], not correct[j]))
        hits.append(any(correct[j] for j in order[:k]))
    return float(np.mean(hits))


def test_composed_query_beats_single_modalities_and_matches_brute_force():
    images, audios, gallery, image_targets, audio_targets, gallery_scene, gallery_sound = build_world()
    result = embedding_arithmetic(
        images,
        audios,
        gallery,
        image_targets=image_targets,
        other_targets=audio_targets,
        gallery_image_attribute=gallery_scene,
        gallery_other_attribute=gallery_sound,
        ks=(1, 3),
        chunk_size=2,
        other_name="audio",
    )
    assert result["image+audio/acc@1"] == 1.0
    assert result["image/acc@1"] == 0.0 and result["audio/acc@1"] == 0.0
    composed = combine_embeddings(images, audios)
    for name, queries in (("image+audio", composed), ("image", images), ("audio", audios)):
        for k in (1, 3):
            expected = brute_accuracy(queries, gallery, image_targets, audio_targets, gallery_scene, gallery_sound, k)
            assert result[f"{name}/acc@{k}"] == expected, (name, k)
    assert result["num_queries"] == 9 and result["num_queries_without_match"] == 0


def test_queries_without_a_matching_item_are_counted_and_excluded():
    images, audios, gallery, image_targets, audio_targets, gallery_scene, gallery_sound = build_world()
    keep = ~((gallery_scene == 2) & (gallery_sound == 2))  # remove the (2, 2) item
    result = embedding_arithmetic(
        images,
        audios,
        gallery[keep],
        image_targets=image_targets,
        other_targets=audio_targets,
        gallery_image_attribute=gallery_scene[keep],
        gallery_other_attribute=gallery_sound[keep],
        ks=(1,),
    )
    assert result["num_queries"] == 8 and result["num_queries_without_match"] == 1
    assert result["image+other/acc@1"] == 1.0  # the second modality is called "other" unless named
    assert set(result) == {"image+other/acc@1", "image/acc@1", "other/acc@1", "num_queries",
                           "num_queries_without_match"}


def test_other_name_must_not_collide_with_the_image_keys():
    images, audios, gallery, image_targets, audio_targets, gallery_scene, gallery_sound = build_world()
    for bad in ("", "image", "a/b"):
        with pytest.raises(ValueError, match="other_name"):
            embedding_arithmetic(images, audios, gallery, image_targets=image_targets, other_targets=audio_targets,
                                 gallery_image_attribute=gallery_scene, gallery_other_attribute=gallery_sound,
                                 ks=(1,), other_name=bad)


def test_combine_embeddings_is_the_normalised_weighted_sum():
    images, audios, *_ = build_world()
    torch.testing.assert_close(combine_embeddings(images, audios, other_weight=0.5), F.normalize(images + 0.5 * audios))
    with pytest.raises(InputError, match="cancels"):
        combine_embeddings(images[:1], -images[:1])
    with pytest.raises(InputError, match="does not match"):
        combine_embeddings(images, audios[:3])
