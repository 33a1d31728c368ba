"""Evaluation metrics for bound embedding spaces: pure functions on tensors and arrays.

Nothing here loads a model or reads files; callers embed their data first and pass
``(N, D)`` matrices (torch tensors or numpy arrays). Run-level sections that call these live in
:mod:`anchorbind.evaluation`, some under the same module name (the same concept one level up).
Modules, one job each:

* :mod:`~anchorbind.metrics.retrieval` -- cross-modal retrieval R@k, median rank, mAP (chunked, bounded memory)
* :mod:`~anchorbind.metrics.zeroshot` -- zero-shot classification through text prompts (CLIP ensembling)
* :mod:`~anchorbind.metrics.arithmetic` -- ImageBind's embedding arithmetic (image + audio queries)
* :mod:`~anchorbind.metrics.gap` -- modality gap statistics and the shift-along-the-gap experiment
* :mod:`~anchorbind.metrics.alignment` -- mutual k-NN, linear CKA, CKNNA between representations
* :mod:`~anchorbind.metrics.groupwise` -- k-means V-measure and k-NN accuracy on stacked modalities
* :mod:`~anchorbind.metrics.probe` -- linear probes (standardised logistic regression)
* :mod:`~anchorbind.metrics.significance` -- lift over chance, spread over seeds, worded comparisons
* :mod:`~anchorbind.metrics.checks` -- input checks every metric shares (shapes, NaN, norms, labels)
"""

from anchorbind.metrics.alignment import (
    alignment_metrics,
    cknna,
    hsic_biased,
    hsic_unbiased,
    linear_cka,
    mutual_knn,
    nearest_neighbors,
    pearson_alignment_vs_performance,
)
from anchorbind.metrics.arithmetic import combine_embeddings, embedding_arithmetic
from anchorbind.metrics.gap import (
    centroid_angle,
    centroid_distance,
    linear_separability,
    mean_inter_similarity,
    mean_intra_similarity,
    mean_pair_cosine,
    modality_gap_metrics,
    shift_along_gap,
    uniformity,
)
from anchorbind.metrics.groupwise import (
    StackedEmbeddings,
    groupwise_metrics,
    kmeans_clusters,
    kmeans_v_measure,
    knn_accuracy,
    stack_modalities,
)
from anchorbind.metrics.probe import linear_probe, make_linear_probe, stratified_split
from anchorbind.metrics.retrieval import (
    CategoryRanking,
    category_ranking,
    chunked_topk,
    retrieval_metrics,
    target_ranks,
)
from anchorbind.metrics.zeroshot import (
    ANCHOR_TEMPLATES,
    DEFAULT_TEMPLATES,
    build_prompts,
    zero_shot_accuracy,
    zero_shot_classifier,
    zero_shot_predict,
)

__all__ = [
    "ANCHOR_TEMPLATES",
    "DEFAULT_TEMPLATES",
    "CategoryRanking",
    "StackedEmbeddings",
    "alignment_metrics",
    "build_prompts",
    "category_ranking",
    "centroid_angle",
    "centroid_distance",
    "chunked_topk",
    "cknna",
    "combine_embeddings",
    "embedding_arithmetic",
    "groupwise_metrics",
    "hsic_biased",
    "hsic_unbiased",
    "kmeans_clusters",
    "kmeans_v_measure",
    "knn_accuracy",
    "linear_cka",
    "linear_probe",
    "linear_separability",
    "make_linear_probe",
    "mean_inter_similarity",
    "mean_intra_similarity",
    "mean_pair_cosine",
    "modality_gap_metrics",
    "mutual_knn",
    "nearest_neighbors",
    "pearson_alignment_vs_performance",
    "retrieval_metrics",
    "shift_along_gap",
    "stack_modalities",
    "stratified_split",
    "target_ranks",
    "uniformity",
    "zero_shot_accuracy",
    "zero_shot_classifier",
    "zero_shot_predict",
]
