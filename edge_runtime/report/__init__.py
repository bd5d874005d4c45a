"""``edge-report``: pictures and tables of an ``edge-run`` run, for the people who tune controllers.

Analysis side, not vehicle side: the vehicle only writes telemetry (``steps.jsonl``,
``summary.json``); this package reads it back and draws it with matplotlib (the ``report``
extra), so nothing of it -- matplotlib included -- reaches the vehicle install. The layer
contract in pyproject.toml keeps the vehicle packages from importing it.

Modules: ``runlog`` reads a run directory (partial and torn logs included), ``style`` holds the
plotting helpers shared with the benchmark scripts, ``figures`` draws the track map, the time
series and the timing plots, ``page`` writes the self-contained HTML page and ``cli`` is
``edge-report``.
"""
