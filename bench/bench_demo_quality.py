"""Quality of the demo, read from its evaluation, checked against the project's targets (JSON).

    anchorbind demo --out demo_out && python bench/bench_demo_quality.py demo_out

Targets: category-level emergent text->audio R@1 >= 5x chance and >= 0.7x the direct
text-audio baseline; also reported: emergent zero-shot audio classification from text prompts,
trained image<->audio and image<->depth retrieval, and the visiocentrism index with and without
the mitigation objective.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def quality(demo_dir: Path) -> dict:
    bound = json.loads((demo_dir / "bind" / "metrics.json").read_text())
    retrieval = bound["retrieval"]
    emergent = retrieval["text->audio"]
    comparison = bound["emergent_vs_direct"]["text->audio"]
    chance = emergent["chance/category/R@1"]
    mitigated = next(iter(bound["compare"].values()), {})
    result = {
        "emergent_text_to_audio_category_R@1": emergent["category/R@1"],
        "chance_category_R@1": chance,
        "emergent_over_chance": emergent["category/R@1"] / chance,
        "direct_text_to_audio_category_R@1": comparison["direct/category/R@1"],
        "emergent_over_direct": comparison["ratio/category/R@1"],
        "zero_shot_audio_acc@1": bound["zero_shot"]["audio"]["acc@1"],
        "zero_shot_chance": bound["zero_shot"]["audio"]["chance"],
        "trained_image_to_audio_category_R@1": retrieval["image->audio"]["category/R@1"],
        "trained_audio_to_image_category_R@1": retrieval["audio->image"]["category/R@1"],
        "trained_image_to_depth_category_R@1": retrieval["image->depth"]["category/R@1"],
        "trained_depth_to_image_category_R@1": retrieval["depth->image"]["category/R@1"],
        "visiocentrism_index_audio": bound["visiocentrism"]["index"].get("audio"),
        "visiocentrism_index_audio_mitigated": mitigated.get("visiocentrism_index", {}).get("audio"),
    }
    # instance level (each query's own item; chance 1 / test samples) next to category level, every pair
    result["by_pair"] = {pair: {"kind": block.get("kind"),
                                "category/R@1": block.get("category/R@1"),
                                "instance/R@1": block.get("instance/R@1"),
                                "instance/R@10": block.get("instance/R@10"),
                                "chance/instance/R@1": block.get("chance/instance/R@1")}
                         for pair, block in retrieval.items()}
    result["emergent_over_direct_instance_R@1"] = comparison.get("ratio/instance/R@1")
    summary = bound["visiocentrism"].get("summary", {}).get("audio", {})
    result["visiocentrism_audio"] = {key: summary.get(key) for key in (
        "index", "index_ci95", "index_std", "index_attributes", "index_excluded", "index_undefined_reason")}
    result["targets"] = {
        "emergent >= 5x chance": result["emergent_over_chance"] >= 5,
        "emergent >= 0.7x direct": result["emergent_over_direct"] >= 0.7,
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_dir", type=Path)
    args = parser.parse_args()
    result = quality(args.demo_dir)
    print(json.dumps(result, indent=2))
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
