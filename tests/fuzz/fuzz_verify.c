/*
 * The signature check (core/verify.h) against OpenSSL's HMAC() called
 * directly: brm_verify_signature says yes exactly when the hex it is given
 * is the MAC of the body, whatever the secret, the digits (either case,
 * wrong ones, too many, too few) or the body; a prepared key gives the same
 * answers when it is reused; and the head's shape check (intake) never
 * refuses a signature that would verify.
 *
 * Input: a byte (bit 0: SHA-1 or SHA-256; the rest: the secret's length),
 * a byte choosing the digits (the fuzzer's own, the right MAC in mixed
 * case, or the right MAC with one digit changed), the secret, for the
 * fuzzer's own digits a length byte and the digits, then the body.
 */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

#include "fuzz.h"
#include "intake.h"
#include "verify.h"

static int nibble(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* HEX[0, N) spells MAC[0, MACLEN) in hex, either case. */
static int spells(const char *hex, size_t n, const unsigned char *mac, size_t maclen) {
    if (n != 2 * maclen) return 0;
    for (size_t i = 0; i < maclen; i++) {
        int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0 || (unsigned)(hi * 16 + lo) != mac[i]) return 0;
    }
    return 1;
}

/* The MAC in hex, each digit's case from a bit of MIX. */
static void to_hex(const unsigned char *mac, size_t maclen, unsigned mix, char *out) {
    static const char lower[] = "0123456789abcdef", upper[] = "0123456789ABCDEF";
    for (size_t i = 0; i < 2 * maclen; i++) {
        unsigned d = i % 2 ? mac[i / 2] & 15 : mac[i / 2] >> 4;
        out[i] = (mix >> (i % 8)) & 1 ? upper[d] : lower[d];
    }
}

/* Checks the head's shape test agrees with a signature that verifies. */
static void check_shape(enum brm_verify_algo algo, const char *hex, size_t n, int verifies) {
    struct brm_source src = { .nsecrets = 1, .allow_sha1 = 1 };
    const char *why = algo == BRM_VERIFY_SHA256 ? brm_intake_refuse_head(&src, hex, n, NULL, 0)
                                                : brm_intake_refuse_head(&src, NULL, 0, hex, n);
    if (verifies) MUST(why == NULL);
    if (!why) MUST(n == (algo == BRM_VERIFY_SHA256 ? 64u : 40u));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct fuzz_in in = { data, size };
    uint8_t b0 = fuzz_byte(&in), mode = fuzz_byte(&in);
    enum brm_verify_algo algo = b0 & 1 ? BRM_VERIFY_SHA1 : BRM_VERIFY_SHA256;
    size_t klen, hexlen = 0;
    const char *secret = fuzz_bytes(&in, b0 >> 1, &klen);
    const char *given = mode % 3 == 0 ? fuzz_bytes(&in, fuzz_byte(&in), &hexlen) : NULL;
    size_t blen;
    const char *body = fuzz_bytes(&in, in.left, &blen);

    unsigned char want[EVP_MAX_MD_SIZE], mine[BRM_VERIFY_MAX_MAC];
    unsigned int wlen = 0;
    static const unsigned char empty[1];
    const EVP_MD *md = algo == BRM_VERIFY_SHA1 ? EVP_sha1() : EVP_sha256();
    MUST(HMAC(md, klen ? secret : (const char *)empty, (int)klen, (const unsigned char *)body, blen,
              want, &wlen));
    MUST(brm_verify_hmac(algo, secret, klen, body, blen, mine) == wlen);
    MUST(memcmp(mine, want, wlen) == 0);

    char hex[2 * EVP_MAX_MD_SIZE];
    if (!given) { /* the right MAC, in mixed case, maybe with one digit changed */
        to_hex(want, wlen, mode, hex);
        hexlen = 2 * wlen;
        if (mode % 3 == 2) hex[mode % hexlen] = hex[mode % hexlen] == '0' ? '1' : '0';
        given = hex;
    }
    int expected = spells(given, hexlen, want, wlen);
    struct brm_verify_key *k = brm_verify_key_new(algo, secret, klen);
    MUST(brm_verify_signature(k, given, hexlen, body, blen) == expected);
    MUST(brm_verify_signature(k, given, hexlen, body, blen) == expected); /* reused */
    check_shape(algo, given, hexlen, expected);
    if (blen) { /* a reused key on another body: the MAC is not carried over */
        MUST(HMAC(md, klen ? secret : (const char *)empty, (int)klen,
                  (const unsigned char *)body + 1, blen - 1, want, &wlen));
        to_hex(want, wlen, 0, hex);
        MUST(brm_verify_signature(k, hex, 2 * wlen, body + 1, blen - 1) == 1);
        MUST(brm_verify_signature(k, hex, 2 * wlen, body, blen) ==
             spells(hex, 2 * wlen, mine, wlen));
    }
    brm_verify_key_free(k);
    return 0;
}
