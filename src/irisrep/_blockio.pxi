# _blockio: placeholder until the topic lands.
