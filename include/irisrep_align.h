/* Aligned allocation for O_DIRECT buffers.
 *
 * O_DIRECT needs the buffer address, the file offset and the length aligned to the
 * device's logical block size; 4096 covers every device we run on. */
#ifndef IRISREP_ALIGN_H
#define IRISREP_ALIGN_H

#include <stdlib.h>
#include <string.h>

#define IRISREP_IO_ALIGN 4096

/* Returns zeroed memory aligned to IRISREP_IO_ALIGN, or NULL. Free with free(). */
static inline void *ir_aligned_alloc(size_t nbytes) {
    void *p = NULL;
    size_t rounded = (nbytes + IRISREP_IO_ALIGN - 1) & ~((size_t)IRISREP_IO_ALIGN - 1);
    if (rounded == 0) rounded = IRISREP_IO_ALIGN;
    if (posix_memalign(&p, IRISREP_IO_ALIGN, rounded) != 0) return NULL;
    memset(p, 0, rounded);
    return p;
}

/* The same, not zeroed: for a buffer that is about to be overwritten whole (a scatter
 * write's staging copy), where zeroing tens of MiB first would cost as much as the copy. */
static inline void *ir_aligned_alloc_uninit(size_t nbytes) {
    void *p = NULL;
    size_t rounded = (nbytes + IRISREP_IO_ALIGN - 1) & ~((size_t)IRISREP_IO_ALIGN - 1);
    if (rounded == 0) rounded = IRISREP_IO_ALIGN;
    if (posix_memalign(&p, IRISREP_IO_ALIGN, rounded) != 0) return NULL;
    return p;
}

#endif
