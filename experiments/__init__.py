"""Research code: the studies behind mcgr's defaults, run from a clone (``python -m experiments.<name>``).

Not part of the product: nothing under ``mcgr/`` imports it and the wheel does not carry it.
"""
