"""Experiments: the reports' result tables as specs, run through the training driver, recorded, rendered.

  specs/<table>.yaml   a table: rows of name + stage + recipe + overrides, with the report's figures quoted
  specs.py             reads and checks the specs; a row's driver command
  records.py           a finished run's record (results/records/<table>/<row>[-seed<k>].json): dev
                       metrics, wall and CPU seconds, steps, command, git commit and dirtiness, machine
  runner.py            runs a row (skips recorded runs, resumes broken ones), writes its record
  render.py, plots.py  RESULTS.md and results/*.png from the records alone

  python -m fastbert.experiments list
  python -m fastbert.experiments run report1-t4 [--seeds 3] [--rows additive,weighted] [--dry-run] [--resume]
  python -m fastbert.experiments render
"""
