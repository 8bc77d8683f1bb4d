# _keycodec declarations: what other topic files may call without Python overhead.
#
# Buffers passed to kc_put_subscripts must hold KC_KEY_BUFFER_BYTES; a key never
# exceeds KC_REFERENCE_BYTES_MAX. The values mirror irisrep.constants (checked when
# _core is imported).

cdef enum:
    KC_REFERENCE_BYTES_MAX = 511
    KC_KEY_BUFFER_BYTES = 512
    KC_SUBSCRIPT_LEVELS_MAX = 255

# Write the encoded subscripts at buf[pos:], return the new length; SubscriptError if
# a subscript is invalid or the key would pass KC_REFERENCE_BYTES_MAX.
cdef Py_ssize_t kc_put_subscripts(unsigned char* buf, Py_ssize_t pos, tuple subs) except -1
# prefix + encoded subs, exactly as encode_key(); neither argument may be None.
cdef bytes kc_encode_key(bytes prefix, tuple subs)
# Offset just past the subscript that starts at key[pos] (no decoding to Python).
cdef Py_ssize_t kc_subscript_end(const unsigned char* key, Py_ssize_t n,
                                 Py_ssize_t pos) except -1
# The subscript at key[pos[0]]; advances pos[0] past it.
cdef object kc_decode_subscript(const unsigned char* key, Py_ssize_t n, Py_ssize_t* pos)
# Every subscript from key[pos] to key[n].
cdef tuple kc_decode_subscripts(const unsigned char* key, Py_ssize_t n, Py_ssize_t pos)
cdef bytes kc_encode_value(object value)
cdef object kc_decode_value(const unsigned char* data, Py_ssize_t n)
