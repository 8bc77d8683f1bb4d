# _keycodec declarations.
