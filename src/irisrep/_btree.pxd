# _btree declarations.
