"""python -m fastbert.train <stage> [--config recipe.yaml] [--key value ...]

Stages: pretrain, nli, contrastive, single, multitask (train), evaluate, predict (a checkpoint given by
--init), chain (stages in a row, from a recipe with `chain:`). Settings: fastbert/train/config.py;
recipes: fastbert/train/recipes/ (--config takes a path or a packaged recipe's name). Examples:

  python -m fastbert.train multitask                       # MiniLM, SST + Quora + STS, round robin
  python -m fastbert.train multitask --routine pcgrad --max_steps 200 --quora.encoder cross
  python -m fastbert.train single --task sts --sts.loss contrastive
  python -m fastbert.train multitask --resume              # continue the newest runs/multitask-*
  python -m fastbert.train chain --config report1_best
  python -m fastbert.train predict --init runs/multitask-20250101-120000

--print_config shows the resolved settings and exits; --skip-bad-rows skips malformed data rows. A bad
setting, file or run directory ends the command with one line on stderr (exit 2); --debug shows the traceback.
"""
from __future__ import annotations

import os
import sys

import yaml

from fastbert import errors
from fastbert.train import config, stages
from fastbert.train.loop import NonFiniteError
from fastbert.train.run import default_dir


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    stage, rest = argv[0], argv[1:]
    overrides = config.parse_overrides(rest)
    recipe_name = overrides.pop("config", None)
    show = overrides.pop("print_config", False)
    recipe = config.load_recipe(str(recipe_name)) if recipe_name else None
    if stage == "chain":
        if recipe is None:
            raise config.ConfigError("chain needs --config with a `chain:` recipe (e.g. --config report1_best)")
        if show:
            print(yaml.safe_dump(config.merge(recipe, overrides), sort_keys=False))
            return 0
        stages.chain(recipe, overrides)
        return 0
    if overrides.get("resume") and stage in config.TRAINING_STAGES:
        # continue with the run's own settings (explicit overrides still apply)
        run_dir = overrides.get("run_dir") or default_dir(stage, True)
        saved = os.path.join(run_dir, "config.yaml")
        if os.path.exists(saved):
            recipe = config.load_recipe(saved)
            overrides["run_dir"] = run_dir
    cfg = config.resolve(stage, recipe, overrides)
    if show:
        print(yaml.safe_dump(cfg, sort_keys=False))
        return 0
    stages.STAGES[stage](cfg)
    return 0


def cli(argv: list[str]) -> int:
    """main() with the user's errors as one line on stderr and exit status 2 (--debug: the traceback too)."""
    debug = "--debug" in argv
    try:
        return main([a for a in argv if a != "--debug"])
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (errors.UserError, NonFiniteError, OSError) as e:  # OSError: the disk or a permission said no
        if debug:
            raise
        print(f"error: {errors.describe(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
