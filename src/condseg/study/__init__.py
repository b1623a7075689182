"""``condseg study``: several methods trained on one protocol (seeds or folds) as jobs, then
compared. ``spec`` reads the study file, ``protocol`` resolves what every method receives,
``runs`` names the runs, ``job`` and ``launch`` run them through submitit, ``report`` shows the
protocol and writes ``study.md``, and ``run`` does the whole study. Nothing heavy is imported
here: a job process imports ``study.job`` alone."""
