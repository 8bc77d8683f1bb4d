# _blockio declarations.
