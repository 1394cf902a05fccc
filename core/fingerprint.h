/*
 * fingerprint: what dedupe knows an event by. A digest of the event as
 * decoded (a Lua table), the same however its JSON was written: object
 * keys in any order, whole numbers as 3, 3.0 or 3e0, strings with or
 * without escapes. It hashes a canonical walk of the value (typed,
 * length-prefixed values; an object's keys sorted by their bytes) with
 * SHA-256, cut to 128 bits. Or, when the source names fields for the
 * topic, the same digest of those fields' values. Tables are read raw: no
 * metamethod, no user code runs. Depends on Lua, util, OpenSSL's
 * libcrypto.
 */
#ifndef BRM_FINGERPRINT_H
#define BRM_FINGERPRINT_H

#include <lua.h>
#include <stddef.h>

/* A fingerprint in hex, with its NUL. */
#define BRM_FINGERPRINT_HEX 33

struct brm_fingerprint;

/* What one thread computes fingerprints with (a hash context, a buffer). */
struct brm_fingerprint *brm_fingerprint_new(void);
void brm_fingerprint_free(struct brm_fingerprint *f);

/*
 * Writes into OUT the fingerprint of the event (a table) at IDX: of the
 * values of its N FIELDS ("mac", or "a.b" for field b of object a), in
 * that order, a missing one counting as missing; or of the whole event
 * when N is 0 or it has none of them. Returns 0, or -1 when the event is
 * nested too deep to walk (OUT is then ""). [-0, +0]
 */
int brm_fingerprint_event(struct brm_fingerprint *f, lua_State *L, int idx,
                          const char *const *fields, size_t n, char out[BRM_FINGERPRINT_HEX]);

#endif
