#include "fingerprint.h"

#include <math.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Deeper than the decoder nests (BRM_JSON_MAX_DEPTH), for events made
 * otherwise; the walk is recursive. */
#define MAX_DEPTH 200
/* A buffer that grew past this for a large event is not kept for the next. */
#define KEEP_TEXT (256u << 10)
/* An object's keys are sorted in a small array on the stack, or on the heap. */
#define FEW_KEYS 16

struct brm_fingerprint {
    EVP_MD *md;
    EVP_MD_CTX *ctx;
    struct brm_buf text; /* the canonical form being hashed */
};

struct brm_fingerprint *brm_fingerprint_new(void) {
    struct brm_fingerprint *f = brm_xcalloc(1, sizeof(*f));
    f->md = EVP_MD_fetch(NULL, "SHA256", NULL); /* fetched once, not per event */
    f->ctx = EVP_MD_CTX_new();
    if (!f->md || !f->ctx) {
        fprintf(stderr, "brume: OpenSSL has no SHA-256 (or no memory for it)\n");
        abort();
    }
    brm_buf_init(&f->text);
    return f;
}

void brm_fingerprint_free(struct brm_fingerprint *f) {
    if (!f) return;
    EVP_MD_CTX_free(f->ctx);
    EVP_MD_free(f->md);
    brm_buf_reset(&f->text);
    free(f);
}

/* ---- the canonical form ------------------------------------------------- */

/* Appends N bytes: brm_buf_append's growth, without a call per field. */
static void put(struct brm_buf *b, const void *p, size_t n) {
    if (b->len + n + 1 > b->cap) brm_buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void put_tag(struct brm_buf *b, char tag) {
    put(b, &tag, 1);
}

/* TAG and V, big-endian. */
static void put_tagged(struct brm_buf *b, char tag, uint64_t v) {
    unsigned char x[9];
    x[0] = (unsigned char)tag;
    for (int i = 8; i >= 1; i--, v >>= 8) x[i] = (unsigned char)(v & 0xff);
    put(b, x, sizeof(x));
}

static void put_string(struct brm_buf *b, const char *s, size_t n) {
    put_tagged(b, 's', n);
    put(b, s, n);
}

/* A whole number is an integer however it was written (3, 3.0, 3e0). */
static void put_number(struct brm_buf *b, lua_State *L, int idx) {
    if (lua_isinteger(L, idx)) {
        put_tagged(b, 'i', (uint64_t)lua_tointeger(L, idx));
        return;
    }
    double d = lua_tonumber(L, idx);
    if (d == floor(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0) {
        put_tagged(b, 'i', (uint64_t)(int64_t)d);
        return;
    }
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    put_tagged(b, 'd', bits);
}

struct key {
    const char *s;
    size_t len;
    int value; /* stack index of its value */
};

static int by_bytes(const void *a, const void *b) {
    const struct key *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int put_value(struct brm_buf *b, lua_State *L, int idx, int depth);

/*
 * A table is an array when its keys are exactly 1..n (as decoded JSON
 * arrays are), else an object: its string keys, sorted (decoded JSON has
 * no other keys in an object). The walk leaves each string key and its
 * value on the stack, so that the values need no second lookup once the
 * keys are sorted, and the keys' bytes stay valid meanwhile.
 */
static int put_table(struct brm_buf *b, lua_State *L, int idx, int depth) {
    struct key few[FEW_KEYS], *keys = few;
    size_t n = lua_rawlen(L, idx), count = 0, nkeys = 0, cap = FEW_KEYS;
    int array = 1, rc = 0, top = lua_gettop(L);
    if (depth > MAX_DEPTH || !lua_checkstack(L, 4)) return -1;
    lua_pushnil(L);
    while (rc == 0 && lua_next(L, idx)) {
        count++;
        if (lua_type(L, -2) != LUA_TSTRING) {
            if (!lua_isinteger(L, -2) || lua_tointeger(L, -2) < 1 ||
                (size_t)lua_tointeger(L, -2) > n)
                array = 0;
            lua_pop(L, 1);
            continue;
        }
        array = 0;
        if (nkeys == cap) {
            cap *= 2;
            keys = keys == few ? memcpy(brm_xmalloc(cap * sizeof(*keys)), few, sizeof(few))
                               : brm_xrealloc(keys, cap * sizeof(*keys));
        }
        keys[nkeys].s = lua_tolstring(L, -2, &keys[nkeys].len);
        keys[nkeys++].value = lua_gettop(L);
        if (!lua_checkstack(L, 3))
            rc = -1;
        else
            lua_pushvalue(L, -2); /* the key again, for lua_next: this pair stays */
    }
    if (rc == 0 && array && count == n) {
        put_tagged(b, 'A', n);
        for (size_t i = 1; i <= n && rc == 0; i++) {
            lua_rawgeti(L, idx, (lua_Integer)i);
            rc = put_value(b, L, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
    } else if (rc == 0) {
        qsort(keys, nkeys, sizeof(*keys), by_bytes);
        put_tagged(b, 'O', nkeys);
        for (size_t i = 0; i < nkeys && rc == 0; i++) {
            put_string(b, keys[i].s, keys[i].len);
            rc = put_value(b, L, keys[i].value, depth + 1);
        }
    }
    lua_settop(L, top);
    if (keys != few) free(keys);
    return rc;
}

static int put_value(struct brm_buf *b, lua_State *L, int idx, int depth) {
    size_t n;
    const char *s;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: put_tag(b, 'z'); return 0;
    case LUA_TBOOLEAN: put_tag(b, lua_toboolean(L, idx) ? 'T' : 'F'); return 0;
    case LUA_TNUMBER: put_number(b, L, idx); return 0;
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &n);
        put_string(b, s, n);
        return 0;
    case LUA_TTABLE: return put_table(b, L, idx, depth);
    case LUA_TLIGHTUSERDATA:
        if (!lua_touserdata(L, idx)) { /* brume.null */
            put_tag(b, 'n');
            return 0;
        }
        break;
    }
    put_tag(b, '?'); /* nothing a decoder makes */
    put_tag(b, (char)lua_type(L, idx));
    return 0;
}

/* Pushes the value at PATH ("a.b") in the table at IDX, or nil. [-0, +1] */
static void push_path(lua_State *L, int idx, const char *path) {
    lua_pushvalue(L, idx);
    for (const char *part = path; *part;) {
        size_t len = strcspn(part, ".");
        if (lua_type(L, -1) != LUA_TTABLE) {
            lua_pop(L, 1);
            lua_pushnil(L);
            return;
        }
        lua_pushlstring(L, part, len);
        lua_rawget(L, -2);
        lua_remove(L, -2);
        part += len + (part[len] == '.');
    }
}

/* The canonical form of the fields, or 0 when the event has none of them. */
static int put_fields(struct brm_buf *b, lua_State *L, int idx, const char *const *fields, size_t n,
                      int *rc) {
    int found = 0;
    put_tagged(b, 'K', n);
    for (size_t i = 0; i < n && *rc == 0; i++) {
        push_path(L, idx, fields[i]);
        if (lua_isnil(L, -1)) {
            put_tag(b, 'x');
        } else {
            found = 1;
            put_tag(b, 'p');
            *rc = put_value(b, L, lua_gettop(L), 1);
        }
        lua_pop(L, 1);
    }
    return found;
}

int brm_fingerprint_event(struct brm_fingerprint *f, lua_State *L, int idx,
                          const char *const *fields, size_t n, char out[BRM_FINGERPRINT_HEX]) {
    struct brm_buf *b = &f->text;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int rc = 0;
    idx = lua_absindex(L, idx);
    out[0] = '\0';
    if (!lua_checkstack(L, 4)) return -1;
    b->len = 0;
    if (n == 0 || !put_fields(b, L, idx, fields, n, &rc)) {
        b->len = 0;
        rc = 0;
        put_tag(b, 'E');
        rc = put_value(b, L, idx, 0);
    }
    if (rc == 0 && (EVP_DigestInit_ex2(f->ctx, f->md, NULL) != 1 ||
                    EVP_DigestUpdate(f->ctx, b->data, b->len) != 1 ||
                    EVP_DigestFinal_ex(f->ctx, md, &mdlen) != 1 || mdlen < 16))
        rc = -1;
    if (rc == 0) brm_hex_encode(md, 16, out);
    if (b->cap > KEEP_TEXT) brm_buf_reset(b);
    return rc;
}
