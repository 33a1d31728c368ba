"""Run-level evaluation: a trained run and test shards in, ``metrics.json``, ``report.md`` and figures out.

Where :mod:`anchorbind.metrics` holds pure functions on embedding matrices, this package knows
about runs: which pairs were trained, emergent or direct, what the data's ground truth says,
where the checkpoints are. Six modules share their name with a metric module on purpose —
``retrieval``, ``zeroshot``, ``arithmetic``, ``gap``, ``groupwise``, ``alignment`` — because
they are the same concept one level up: ``anchorbind.evaluation.gap`` computes the ``gap``
section of ``metrics.json`` for every modality pair of a run by calling
``anchorbind.metrics.gap``.

* :mod:`~anchorbind.evaluation.evaluate` -- ``anchorbind eval``: :class:`EvalConfig`, ``evaluate_run``
* :mod:`~anchorbind.evaluation.extract` -- embed a split once (embeddings, native features, masks)
* :mod:`~anchorbind.evaluation.processes` -- ``anchorbind eval`` under ``accelerate launch``: shares embedded
  in every process, evaluated once by the main process
* :mod:`~anchorbind.evaluation.shard_check` -- which modalities the shards carry, before embedding
* :mod:`~anchorbind.evaluation.schema` -- the ground truth a sample's JSON carries
* :mod:`~anchorbind.evaluation.pairs` -- trained / emergent / direct pair labels
* :mod:`~anchorbind.evaluation.retrieval`, ``zeroshot``, ``arithmetic``, ``groupwise``, ``gap``,
  ``alignment`` -- one ``metrics.json`` section each
* :mod:`~anchorbind.evaluation.checkpoint_alignment` -- alignment vs retrieval across checkpoints
* :mod:`~anchorbind.evaluation.visiocentrism` -- which non-visual information survives binding
* :mod:`~anchorbind.evaluation.report`, :mod:`~anchorbind.evaluation.figures` -- ``anchorbind report``
"""
