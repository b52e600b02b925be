"""The training driver: `python -m fastbert.train <stage> [--config recipe.yaml] [--key value ...]`.

Python API: fastbert.train.run_stage("multitask", max_steps=100, routine="pcgrad") (keyword arguments are
overrides, as on the command line), or fastbert.train.stages / config for the parts.
"""
from __future__ import annotations


def run_stage(stage: str, recipe: dict | str | None = None, **overrides) -> dict:
    """Run a stage; `recipe` a dict, a recipe file or a packaged recipe name (None: the stage's own)."""
    from fastbert.train import config, stages

    if isinstance(recipe, str):
        recipe = config.load_recipe(recipe)
    if stage == "chain":
        return stages.chain(recipe or {}, overrides)
    return stages.STAGES[stage](config.resolve(stage, recipe, overrides))
