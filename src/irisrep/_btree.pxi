# _btree: placeholder until the topic lands.
