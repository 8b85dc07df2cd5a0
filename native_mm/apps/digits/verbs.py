"""The digits application's CLI verbs, registered through the ``native_mm.apps``
entry-point group (pyproject.toml) so that the library's CLI never imports this package."""

VERBS: dict[tuple[str, ...], tuple[str, str]] = {
    ("run",): (
        "native_mm.apps.digits.pipeline:main",
        "the main job: corpus, tokenizers, shards, fit, eval from one recipe (recipes/digits.yaml)",
    ),
    ("sft",): (
        "native_mm.apps.digits.sft:main",
        "the second stage: instruction-tune a main-job model into a conversational one",
    ),
    ("eval",): (
        "native_mm.apps.digits.evaluation:main",
        "held-out accuracy of a checkpoint in all six directions, with image grids and WAVs",
    ),
}
