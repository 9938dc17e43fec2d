"""Evaluation of retrieval: metrics, baselines, benchmark-set builders and the `earworm eval` commands.

    earworm eval --catalogue CAT/manifest.csv --queries Q.csv --model MODEL_DIR --out DIR
    earworm benchset synthetic|mir1k-cross|openset --out DIR
    earworm eval-suite --model MODEL_DIR --out DIR

Library entry points: `training.evaluation.runner.evaluate(EvalConfig)` and
`training.evaluation.metrics.summarize(outcomes)`.
"""
