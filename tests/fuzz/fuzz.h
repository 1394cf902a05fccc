/*
 * What the fuzz targets share: the libFuzzer entry point each defines,
 * MUST (a broken property aborts, which libFuzzer and the replay report as
 * a crash with the input that caused it), and a reader that turns the
 * fuzzer's bytes into choices. Targets are built two ways: with clang's
 * -fsanitize=fuzzer for campaigns (./build.sh fuzz), and with replay.c as
 * their main for the test suite, which replays the committed corpora.
 */
#ifndef BRM_FUZZ_H
#define BRM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MUST(cond)                                                                                 \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property broken: %s\n", __FILE__, __LINE__, #cond);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* The input, read front to back; past its end every read gives zeros. */
struct fuzz_in {
    const uint8_t *p;
    size_t left;
};

static inline uint8_t fuzz_byte(struct fuzz_in *in) {
    if (!in->left) return 0;
    in->left--;
    return *in->p++;
}

/* Up to N bytes (fewer at the end); their count goes to *LEN. */
static inline const char *fuzz_bytes(struct fuzz_in *in, size_t n, size_t *len) {
    const char *s = (const char *)in->p;
    *len = n < in->left ? n : in->left;
    in->p += *len;
    in->left -= *len;
    return s;
}

#endif
