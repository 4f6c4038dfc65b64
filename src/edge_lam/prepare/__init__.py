"""Preparing the cache once at setup: the models and data of ``edge_lam.assets`` built from the packages that ship
them (``steps``), and the patch codebook trained on the photos (``codebook``). Above the encoders it uses; nothing
at run time imports this."""
