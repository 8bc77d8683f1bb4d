# _keycodec: placeholder until the topic lands.
