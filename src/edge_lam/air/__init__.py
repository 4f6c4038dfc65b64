"""The 6G air-interface example: CDL channels as data, CSI as tokens, a LAM channel predictor and beam selection,
and the classical predictors it is measured against."""
