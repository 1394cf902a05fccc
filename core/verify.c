#include "verify.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>

#include "util.h"

struct brm_verify_key {
    EVP_MAC_CTX *ctx; /* keyed once; re-initialised without a key per MAC */
    size_t maclen;
};

static const char *digest_name(enum brm_verify_algo algo) {
    return algo == BRM_VERIFY_SHA1 ? "SHA1" : "SHA256";
}

static void crypto_fail(const char *what) {
    fprintf(stderr, "brume: OpenSSL failed: %s\n", what);
    abort();
}

struct brm_verify_key *brm_verify_key_new(enum brm_verify_algo algo, const void *secret,
                                          size_t len) {
    struct brm_verify_key *k = brm_xcalloc(1, sizeof(*k));
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!mac) crypto_fail("EVP_MAC_fetch(HMAC)");
    k->ctx = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac);
    if (!k->ctx) crypto_fail("EVP_MAC_CTX_new");
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)digest_name(algo), 0),
        OSSL_PARAM_construct_end(),
    };
    /* An empty secret is still a key; OpenSSL wants a non-NULL pointer. */
    static const unsigned char empty[1];
    if (!EVP_MAC_init(k->ctx, len ? secret : empty, len, params)) crypto_fail("EVP_MAC_init");
    k->maclen = EVP_MAC_CTX_get_mac_size(k->ctx);
    return k;
}

void brm_verify_key_free(struct brm_verify_key *k) {
    if (!k) return;
    EVP_MAC_CTX_free(k->ctx);
    free(k);
}

int brm_verify_signature(struct brm_verify_key *k, const char *hex, size_t hexlen, const void *body,
                         size_t len) {
    unsigned char want[BRM_VERIFY_MAX_MAC], got[BRM_VERIFY_MAX_MAC];
    size_t outl = 0;
    if (hexlen != 2 * k->maclen) return 0; /* the length is public: no timing to hide */
    if (!EVP_MAC_init(k->ctx, NULL, 0, NULL) || !EVP_MAC_update(k->ctx, body, len) ||
        !EVP_MAC_final(k->ctx, want, &outl, sizeof(want)))
        crypto_fail("HMAC");
    /* Decode every digit before comparing, so a bad digit costs the same time. */
    int bad = brm_hex_decode(hex, k->maclen, got) < 0;
    return !bad & (CRYPTO_memcmp(want, got, k->maclen) == 0);
}

size_t brm_verify_hmac(enum brm_verify_algo algo, const void *key, size_t keylen, const void *data,
                       size_t len, unsigned char out[BRM_VERIFY_MAX_MAC]) {
    static const unsigned char empty[1];
    unsigned int outl = 0;
    const EVP_MD *md = algo == BRM_VERIFY_SHA1 ? EVP_sha1() : EVP_sha256();
    if (!HMAC(md, keylen ? key : empty, (int)keylen, data, len, out, &outl)) crypto_fail("HMAC");
    return outl;
}
