"""asv benchmarks for fastppo (see ``benchmarks/asv.conf.json``).

Run from ``benchmarks/``::

    asv machine --yes
    asv check --python=same
    asv run --python=same --quick --show-stderr        # the default suite, a few minutes
    FASTPPO_ASV_SLOW=1 asv run --python=same           # + n_states = 50,000
"""
