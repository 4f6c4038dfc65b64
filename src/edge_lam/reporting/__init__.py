"""From tokens to words to reports: semantic tokens verbalised into a prompt (``verbalize``), the ``reporter`` node
that asks the LAM for a report every few seconds, and where a report's time went (``timings``)."""
