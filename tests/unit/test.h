/*
 * A small test harness: CHECK records a failure and goes on, so one run
 * reports every broken expectation; main returns test_done(). Tests that
 * need a module's statics include its .c (h2o's t/00unit style).
 */
#ifndef BRM_TEST_H
#define BRM_TEST_H

#include <stdio.h>
#include <string.h>

static int test_checks, test_failures;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        test_checks++;                                                                             \
        if (!(cond)) {                                                                             \
            test_failures++;                                                                       \
            fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond);                     \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        test_checks++;                                                                             \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                                   \
            test_failures++;                                                                       \
            fprintf(stderr, "%s:%d: failed: %s == %s\n  got:  %.600s\n  want: %.600s\n", __FILE__, \
                    __LINE__, #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");                     \
        }                                                                                          \
    } while (0)

#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        test_checks++;                                                                             \
        if (a_ != b_) {                                                                            \
            test_failures++;                                                                       \
            fprintf(stderr, "%s:%d: failed: %s == %s (got %lld, want %lld)\n", __FILE__, __LINE__, \
                    #a, #b, a_, b_);                                                               \
        }                                                                                          \
    } while (0)

/* CHECK that string HAY contains NEEDLE. */
#define CHECK_HAS(hay, needle)                                                                     \
    do {                                                                                           \
        const char *h_ = (hay), *n_ = (needle);                                                    \
        test_checks++;                                                                             \
        if (!h_ || !strstr(h_, n_)) {                                                              \
            test_failures++;                                                                       \
            fprintf(stderr, "%s:%d: failed: \"%.300s\" contains \"%s\"\n", __FILE__, __LINE__,     \
                    h_ ? h_ : "(null)", n_);                                                       \
        }                                                                                          \
    } while (0)

static inline int test_done(void) {
    printf("%d checks, %d failed\n", test_checks, test_failures);
    return test_failures != 0;
}

#endif
