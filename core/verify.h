/*
 * verify: Mist webhook signatures, as pure functions over bytes. Mist signs
 * the raw body with the webhook's secret: X-Mist-Signature-v2 carries the
 * HMAC-SHA256 and the legacy X-Mist-Signature the HMAC-SHA1, both as hex.
 * A key holds a secret prepared once (OpenSSL's keyed MAC context) so each
 * request costs one MAC, not a setup; a key belongs to one thread. No I/O,
 * no Lua. Depends on OpenSSL's libcrypto and util.
 */
#ifndef BRM_VERIFY_H
#define BRM_VERIFY_H

#include <stddef.h>

enum brm_verify_algo { BRM_VERIFY_SHA256, BRM_VERIFY_SHA1 };

#define BRM_VERIFY_MAX_MAC 32 /* bytes of the longest MAC */

struct brm_verify_key;

/* Prepares SECRET for repeated use; the caller keeps ownership of SECRET.
 * Aborts when OpenSSL cannot allocate. */
struct brm_verify_key *brm_verify_key_new(enum brm_verify_algo algo, const void *secret,
                                          size_t len);
void brm_verify_key_free(struct brm_verify_key *k);

/*
 * Returns 1 when HEX (HEXLEN digits, either case) is the MAC of BODY under
 * K, 0 otherwise: wrong length, a non-hex digit, or a different MAC. The
 * comparison takes the same time whatever the digits, so a caller cannot
 * learn how much of a forged signature was right.
 */
int brm_verify_signature(struct brm_verify_key *k, const char *hex, size_t hexlen, const void *body,
                         size_t len);

/* Writes the MAC of DATA under KEY into OUT; returns its length. */
size_t brm_verify_hmac(enum brm_verify_algo algo, const void *key, size_t keylen, const void *data,
                       size_t len, unsigned char out[BRM_VERIFY_MAX_MAC]);

#endif
