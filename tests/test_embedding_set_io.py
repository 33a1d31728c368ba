"""EmbeddingSet.save/load: keys and metadata in a JSON-lines sidecar (any size), old layout still read."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from anchorbind.evaluation.extract import ROWS_SUFFIX, EmbeddingSet


def embedding_set(rows: int, dim: int = 4) -> EmbeddingSet:
    generator = torch.Generator().manual_seed(0)

    def rand(width: int) -> torch.Tensor:
        return torch.randn(rows, width, generator=generator)

    mask = torch.rand(rows, generator=generator) > 0.3
    return EmbeddingSet(
        keys=[f"scene-{i:06d}" for i in range(rows)],
        embeddings={"image": rand(dim), "text": rand(dim)},
        features={"image": rand(3), "text": rand(2)},
        masks={"image": torch.ones(rows, dtype=torch.bool), "text": mask},
        meta=[{"category": f"class{i % 10}", "index": i} if i % 7 else None for i in range(rows)],
        errors=[{"key": "scene-x", "member": "flac", "error": "truncated"}],
    )


def assert_same(loaded: EmbeddingSet, original: EmbeddingSet) -> None:
    assert loaded.keys == original.keys
    assert loaded.meta == original.meta
    assert loaded.errors == original.errors
    assert loaded.modalities == original.modalities
    for name in original.modalities:
        assert torch.equal(loaded.embeddings[name], original.embeddings[name])
        assert torch.equal(loaded.features[name], original.features[name])
        assert torch.equal(loaded.masks[name], original.masks[name])


def test_100k_rows_round_trip(tmp_path):
    # The old layout kept keys and metadata as JSON in the safetensors header, which is capped at
    # 100 MB: a world's scene metadata (~2.5 kB each) failed with "header too large" at ~40k
    # samples, after all the work. The header now has the same size whatever the row count.
    original = embedding_set(100_000)
    path = tmp_path / "embeddings_test.safetensors"
    original.save(path)
    assert_same(EmbeddingSet.load(path), original)
    header_bytes = int.from_bytes(path.read_bytes()[:8], "little")
    assert header_bytes < 2048
    sidecars = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(ROWS_SUFFIX))
    assert len(sidecars) == 1 and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_saving_again_replaces_the_sidecar_and_leaves_no_stale_one(tmp_path):
    path = tmp_path / "emb.safetensors"
    embedding_set(50).save(path)
    second = embedding_set(30)
    second.save(path)
    assert_same(EmbeddingSet.load(path), second)
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(ROWS_SUFFIX)]) == 1


def test_old_layout_with_json_in_the_header_still_loads(tmp_path):
    original = embedding_set(20)
    tensors = {}
    for name in original.modalities:
        tensors[f"embeddings/{name}"] = original.embeddings[name]
        tensors[f"features/{name}"] = original.features[name]
        tensors[f"masks/{name}"] = original.masks[name].to(torch.uint8)
    path = tmp_path / "old.safetensors"
    save_file(
        tensors,
        str(path),
        metadata={
            "keys": json.dumps(original.keys),
            "meta": json.dumps(original.meta),
            "errors": json.dumps(original.errors),
        },
    )
    assert_same(EmbeddingSet.load(path), original)


def test_a_missing_or_altered_sidecar_is_named(tmp_path):
    path = tmp_path / "emb.safetensors"
    embedding_set(10).save(path)
    (sidecar,) = [p for p in tmp_path.iterdir() if p.name.endswith(ROWS_SUFFIX)]
    sidecar.write_text(sidecar.read_text().replace("scene-000003", "scene-999999"))
    with pytest.raises(ValueError, match="checksum"):
        EmbeddingSet.load(path)
    sidecar.unlink()
    with pytest.raises(ValueError, match="missing"):
        EmbeddingSet.load(path)
