#include "json.h"

#include <lauxlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Numbers are read with strtod and written with snprintf, which follow
 * LC_NUMERIC: brume never calls setlocale, so both use the C locale's '.'.
 */

/* An array or object holds up to this many values on the Lua stack, so
 * that its table is made once at its final size; a larger one is made at
 * this size and then grows as Lua tables do. */
#define GATHER_MAX 256
/* Stack slots one more element may take: a key, a value, and what
 * luaL_Buffer or make_object push for a moment. Room is made for
 * RESERVE_EVERY elements at a time. */
#define ELEMENT_SLOTS 8
#define RESERVE_EVERY 16
/* Strings remembered, by depth and position (see decode_cached): half for
 * the keys of objects, half for their string values. */
#define STRING_CACHE 128

/* ---- decode ------------------------------------------------------------- */

struct decoder {
    lua_State *L;
    const char *start, *p, *end;
    int depth;
    int base;          /* stack top of decode_protected's frame */
    const char *watch; /* a top-level key whose value's kind is noted, or NULL */
    size_t watch_len;
    int watch_kind;  /* '[' or '{' when that value was an array or object */
    int out_of_room; /* the Lua stack could not grow */
    struct brm_err *err;
    int cache_at; /* stack index of the string cache's first slot */
    struct {
        const char *s; /* the bytes of the string in its slot; NULL: none */
        size_t n;
    } cache[STRING_CACHE];
};

/* Stops the decode with "REASON at byte N" (or "after byte N" at the end
 * of the text). The error value is D itself, a light userdata, so that
 * failing allocates nothing; decode_text's lua_pcall catches it. */
static _Noreturn void fail(struct decoder *d, const char *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static _Noreturn void fail(struct decoder *d, const char *at, const char *fmt, ...) {
    char reason[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    size_t pos = (size_t)(at - d->start);
    if (at == d->end)
        brm_err_set(d->err, "%s after byte %zu", reason, pos);
    else
        brm_err_set(d->err, "%s at byte %zu", reason, pos + 1);
    lua_settop(d->L, d->base);
    lua_pushlightuserdata(d->L, d);
    lua_error(d->L);
    abort(); /* not reached: lua_error does not return */
}

static _Noreturn void unexpected(struct decoder *d, const char *at) {
    unsigned char c = at < d->end ? (unsigned char)*at : 0;
    if (at == d->end) fail(d, at, "unexpected end of text");
    if (c > 0x20 && c < 0x7f) fail(d, at, "unexpected character '%c'", c);
    fail(d, at, "unexpected byte 0x%02x", c);
}

/* Room on the Lua stack for N more slots. lua_checkstack fails only when
 * the stack cannot be reallocated: GATHER_MAX and the depth limit keep a
 * decode far below Lua's own stack limit. */
static void reserve_slots(struct decoder *d, int n) {
    if (lua_checkstack(d->L, n)) return;
    d->out_of_room = 1;
    fail(d, d->p, "not enough memory");
}

static void skip_space(struct decoder *d) {
    const char *p = d->p;
    while (p < d->end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    d->p = p;
}

static void expect_word(struct decoder *d, const char *word, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (d->p + i == d->end || d->p[i] != word[i]) unexpected(d, d->p + i);
    d->p += n;
}

static int is_digit(const char *p, const char *end) {
    return p < end && *p >= '0' && *p <= '9';
}

/* Pushes V, as an integer when it is whole and within int64: brume's rule
 * that whole numbers are Lua integers (1.0 and 1e2 are 1 and 100). */
static void push_double(lua_State *L, double v) {
    if (v >= -0x1p63 && v < 0x1p63 && v == floor(v))
        lua_pushinteger(L, (lua_Integer)v);
    else
        lua_pushnumber(L, v);
}

/* Reads the number literal of N bytes at S, checked by decode_number;
 * as an integer when WHOLE_OK and it is one. */
static void push_float_text(struct decoder *d, const char *s, size_t n, int whole_ok) {
    char text[64];
    double v;
    if (n < sizeof(text)) {
        memcpy(text, s, n);
        text[n] = '\0';
        v = strtod(text, NULL);
    } else { /* a literal this long is rare: a Lua string is NUL-terminated */
        lua_pushlstring(d->L, s, n);
        v = strtod(lua_tostring(d->L, -1), NULL);
        lua_pop(d->L, 1);
    }
    if (whole_ok)
        push_double(d->L, v);
    else
        lua_pushnumber(d->L, v);
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?  An integer literal that
 * fits int64 is read exactly, without strtod. */
static void decode_number(struct decoder *d) {
    const char *s = d->p, *p = s, *end = d->end;
    int neg = *p == '-', fits = 1, frac = 0;
    uint64_t u = 0;
    if (neg) p++;
    if (!is_digit(p, end)) unexpected(d, p);
    if (*p == '0') {
        p++;
    } else {
        for (; is_digit(p, end); p++) {
            if (u >= 1000000000000000000u) fits = 0; /* 19 digits or more */
            if (fits) u = u * 10 + (uint64_t)(*p - '0');
        }
    }
    if (p < end && *p == '.') {
        frac = 1;
        if (!is_digit(++p, end)) unexpected(d, p);
        while (is_digit(p, end)) p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        frac = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (!is_digit(p, end)) unexpected(d, p);
        while (is_digit(p, end)) p++;
    }
    d->p = p;
    if (frac)
        push_float_text(d, s, (size_t)(p - s), 1);
    else if (!fits || u > (uint64_t)INT64_MAX + neg) /* an integer past int64 */
        push_float_text(d, s, (size_t)(p - s), 0);
    else if (neg)
        lua_pushinteger(d->L, u == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)u);
    else
        lua_pushinteger(d->L, (lua_Integer)u);
}

static int hex4(const char *p, const char *end) {
    int v = 0;
    if (end - p < 4) return -1;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int x = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (x < 0) return -1;
        v = v * 16 + x;
    }
    return v;
}

/* Writes code point CP as UTF-8. A lone surrogate gets its 3-byte form,
 * which is not valid UTF-8 but loses nothing of what was sent. */
static void add_utf8(luaL_Buffer *b, unsigned cp) {
    if (cp < 0x80) {
        luaL_addchar(b, (char)cp);
    } else if (cp < 0x800) {
        luaL_addchar(b, (char)(0xc0 | cp >> 6));
        luaL_addchar(b, (char)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        luaL_addchar(b, (char)(0xe0 | cp >> 12));
        luaL_addchar(b, (char)(0x80 | (cp >> 6 & 0x3f)));
        luaL_addchar(b, (char)(0x80 | (cp & 0x3f)));
    } else {
        luaL_addchar(b, (char)(0xf0 | cp >> 18));
        luaL_addchar(b, (char)(0x80 | (cp >> 12 & 0x3f)));
        luaL_addchar(b, (char)(0x80 | (cp >> 6 & 0x3f)));
        luaL_addchar(b, (char)(0x80 | (cp & 0x3f)));
    }
}

/* \uXXXX at P (the backslash), with a following low surrogate combined
 * into one code point. Returns what follows. */
static const char *decode_unicode(struct decoder *d, luaL_Buffer *b, const char *p) {
    int cp = hex4(p + 2, d->end);
    if (cp < 0) fail(d, p, "invalid \\u escape");
    p += 6;
    if (cp >= 0xd800 && cp <= 0xdbff && d->end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
        int lo = hex4(p + 2, d->end);
        if (lo >= 0xdc00 && lo <= 0xdfff) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            p += 6;
        }
    }
    add_utf8(b, (unsigned)cp);
    return p;
}

/* The escape at P (a backslash). Returns what follows. */
static const char *decode_escape(struct decoder *d, luaL_Buffer *b, const char *p) {
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    if (p + 1 == d->end) unexpected(d, d->end);
    if (p[1] == 'u') return decode_unicode(d, b, p);
    const char *k = p[1] ? strchr(from, p[1]) : NULL;
    if (!k) {
        unsigned char c = (unsigned char)p[1];
        if (c > 0x20 && c < 0x7f) fail(d, p, "invalid escape '\\%c'", c);
        fail(d, p, "invalid escape '\\' then byte 0x%02x", c);
    }
    luaL_addchar(b, to[k - from]);
    return p + 2;
}

/* The rest of a string that has escapes, from S (after the quote); P is
 * the first backslash. The buffer is used in one piece, with nothing else
 * pushed meanwhile, as luaL_Buffer requires. */
static void decode_escaped(struct decoder *d, const char *s, const char *p) {
    luaL_Buffer b;
    luaL_buffinit(d->L, &b);
    luaL_addlstring(&b, s, (size_t)(p - s));
    while (*p != '"') {
        p = decode_escape(d, &b, p);
        const char *run = p;
        while (p < d->end && *p != '"' && *p != '\\') p++;
        if (p == d->end) fail(d, s - 1, "unterminated string");
        luaL_addlstring(&b, run, (size_t)(p - run));
    }
    luaL_pushresult(&b);
    d->p = p + 1;
}

/* A string, kept byte for byte: invalid UTF-8 and raw control bytes are
 * accepted, since refusing a body Mist sent would lose its whole batch.
 * Without escapes it is pushed straight from the text: then returns 1. */
static int decode_string(struct decoder *d) {
    const char *s = d->p + 1;
    const char *q = memchr(s, '"', (size_t)(d->end - s));
    const char *bs = memchr(s, '\\', (size_t)((q ? q : d->end) - s));
    if (bs) {
        decode_escaped(d, s, bs);
        return 0;
    }
    if (!q) fail(d, d->p, "unterminated string");
    lua_pushlstring(d->L, s, (size_t)(q - s));
    d->p = q + 1;
    return 1;
}

/*
 * The key (VALUE 0) or string value (VALUE 1) of member INDEX of an
 * object. The objects of a batch mostly share their keys, in the same
 * order, and many values (org_id, site_id, type): a string whose bytes are
 * those of the one last met at the same depth and position is pushed from
 * the cache's stack slot, which spares Lua hashing and interning it again.
 * Only strings without escapes are kept, so equal bytes mean an equal
 * string.
 */
static void decode_cached(struct decoder *d, int index, int value) {
    unsigned slot = ((unsigned)d->depth * 31u + (unsigned)index) % (STRING_CACHE / 2);
    slot += value ? STRING_CACHE / 2 : 0;
    const char *s = d->p + 1, *k = d->cache[slot].s;
    size_t n = d->cache[slot].n;
    if (k && (size_t)(d->end - s) > n && s[n] == '"' && memcmp(s, k, n) == 0) {
        lua_pushvalue(d->L, d->cache_at + (int)slot);
        d->p = s + n + 1;
        return;
    }
    if (!decode_string(d)) return;
    lua_pushvalue(d->L, -1);
    lua_replace(d->L, d->cache_at + (int)slot);
    d->cache[slot].s = lua_tolstring(d->L, -1, &d->cache[slot].n);
}

static void decode_value(struct decoder *d);

static void enter(struct decoder *d) {
    if (++d->depth > BRM_JSON_MAX_DEPTH)
        fail(d, d->p, "nested deeper than %d levels", BRM_JSON_MAX_DEPTH);
    d->p++;
    skip_space(d);
}

/* After an element: 1 at a comma, 0 at CLOSE (both consumed). */
static int next_element(struct decoder *d, char close) {
    skip_space(d);
    if (d->p < d->end && *d->p == ',') {
        d->p++;
        skip_space(d);
        return 1;
    }
    if (d->p < d->end && *d->p == close) {
        d->p++;
        return 0;
    }
    unexpected(d, d->p);
}

/* Replaces the N values from FIRST up by one table holding them. */
static int make_array(lua_State *L, int first, int n) {
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushvalue(L, first + i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_replace(L, first);
    lua_settop(L, first);
    return first;
}

/* Replaces the N key-value pairs from FIRST up by one table holding them,
 * set in order so that the last of duplicate keys wins. */
static int make_object(lua_State *L, int first, int n) {
    lua_createtable(L, 0, n);
    for (int i = 0; i < n; i++) {
        lua_pushvalue(L, first + 2 * i);
        lua_pushvalue(L, first + 2 * i + 1);
        lua_rawset(L, -3);
    }
    lua_replace(L, first);
    lua_settop(L, first);
    return first;
}

static void decode_array(struct decoder *d) {
    lua_State *L = d->L;
    int first = lua_gettop(L) + 1, table = 0, n = 0;
    enter(d);
    if (d->p < d->end && *d->p == ']') {
        d->p++;
        lua_createtable(L, 0, 0);
    } else {
        do {
            if (n % RESERVE_EVERY == 0) reserve_slots(d, RESERVE_EVERY + ELEMENT_SLOTS);
            decode_value(d);
            n++;
            if (table)
                lua_rawseti(L, table, n);
            else if (n == GATHER_MAX)
                table = make_array(L, first, n);
        } while (next_element(d, ']'));
        if (!table) make_array(L, first, n);
    }
    d->depth--;
}

/* Notes the kind of the value of the top-level key just pushed, when it
 * is the watched one (the envelope tells "events": {} from []). */
static void note_watched(struct decoder *d) {
    size_t n;
    const char *k = lua_tolstring(d->L, -1, &n);
    if (n != d->watch_len || memcmp(k, d->watch, n) != 0) return;
    d->watch_kind = d->p < d->end && (*d->p == '[' || *d->p == '{') ? *d->p : 0;
}

static void decode_member(struct decoder *d, int index) {
    if (d->p == d->end || *d->p != '"') unexpected(d, d->p);
    decode_cached(d, index, 0);
    skip_space(d);
    if (d->p == d->end || *d->p != ':') unexpected(d, d->p);
    d->p++;
    skip_space(d);
    if (d->watch && d->depth == 1) note_watched(d);
    if (d->p < d->end && *d->p == '"')
        decode_cached(d, index, 1);
    else
        decode_value(d);
}

static void decode_object(struct decoder *d) {
    lua_State *L = d->L;
    int first = lua_gettop(L) + 1, table = 0, n = 0, i = 0;
    enter(d);
    if (d->p < d->end && *d->p == '}') {
        d->p++;
        lua_createtable(L, 0, 0);
    } else {
        do {
            if (i % RESERVE_EVERY == 0) reserve_slots(d, 2 * RESERVE_EVERY + ELEMENT_SLOTS);
            decode_member(d, i++);
            if (table)
                lua_rawset(L, table);
            else if (++n == GATHER_MAX)
                table = make_object(L, first, n);
        } while (next_element(d, '}'));
        if (!table) make_object(L, first, n);
    }
    d->depth--;
}

/* One value at d->p, after any whitespace. Pushes it. */
static void decode_value(struct decoder *d) {
    if (d->p == d->end) unexpected(d, d->p);
    switch (*d->p) {
    case '{': decode_object(d); return;
    case '[': decode_array(d); return;
    case '"': decode_string(d); return;
    case 't':
        expect_word(d, "true", 4);
        lua_pushboolean(d->L, 1);
        return;
    case 'f':
        expect_word(d, "false", 5);
        lua_pushboolean(d->L, 0);
        return;
    case 'n':
        expect_word(d, "null", 4);
        lua_pushlightuserdata(d->L, NULL);
        return;
    default:
        if (*d->p != '-' && !is_digit(d->p, d->end)) unexpected(d, d->p);
        decode_number(d);
    }
}

/* lua_pcall'd: argument 1 is the decoder. */
static int decode_protected(lua_State *L) {
    struct decoder *d = lua_touserdata(L, 1);
    d->base = lua_gettop(L);
    d->cache_at = d->base + 1;
    reserve_slots(d, STRING_CACHE + ELEMENT_SLOTS);
    lua_settop(L, d->base + STRING_CACHE); /* the string cache's slots, nil */
    skip_space(d);
    decode_value(d);
    skip_space(d);
    if (d->p != d->end) fail(d, d->p, "trailing characters");
    return 1;
}

/* Runs D over its text in protected mode: an allocation failure raises
 * LUA_ERRMEM, and nothing of C is left to free. */
static int decode_text(struct decoder *d) {
    lua_State *L = d->L;
    if (!lua_checkstack(L, 2)) {
        brm_err_set(d->err, "not enough memory to decode");
        return -2;
    }
    lua_pushcfunction(L, decode_protected);
    lua_pushlightuserdata(L, d);
    int st = lua_pcall(L, 1, 1, 0);
    if (st == LUA_OK) return 0;
    int rc = -1;
    if (st == LUA_ERRMEM || d->out_of_room) {
        brm_err_set(d->err, "not enough memory to decode");
        rc = -2;
    } else if (lua_touserdata(L, -1) != d) { /* not one of fail()'s */
        const char *msg = lua_tostring(L, -1);
        brm_err_set(d->err, "%s", msg ? msg : "decoding failed");
    }
    lua_pop(L, 1);
    return rc;
}

static void decoder_init(struct decoder *d, lua_State *L, const char *s, size_t len,
                         struct brm_err *err) {
    memset(d, 0, sizeof(*d));
    d->L = L;
    d->start = d->p = s;
    d->end = s + len;
    d->err = err;
}

int brm_json_decode(lua_State *L, const char *s, size_t len, struct brm_err *err) {
    struct decoder d;
    decoder_init(&d, L, s, len, err);
    return decode_text(&d);
}

/* ---- encode ------------------------------------------------------------- */

/* The text starts in the encoder's own room (most messages fit) and grows
 * in memory from the VM's own allocator, so a rule's encode counts against
 * its VM's cap; it is freed when the encode ends. */
#define ENCODE_ROOM 512

struct encoder {
    lua_State *L;
    lua_Alloc alloc;
    void *ud;
    char *buf; /* room, or the allocator's */
    size_t len, cap;
    int depth;
    struct brm_err *err;
    char room[ENCODE_ROOM];
};

static int encode_fail(struct encoder *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int encode_fail(struct encoder *e, const char *fmt, ...) {
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    brm_err_set(e->err, "%s", msg);
    return -1;
}

/* Makes room for N more bytes, within BRM_JSON_MAX_TEXT. */
static int grow(struct encoder *e, size_t n) {
    if (n > BRM_JSON_MAX_TEXT - e->len)
        return encode_fail(e, "the JSON text would be longer than %zu MB", BRM_JSON_MAX_TEXT >> 20);
    size_t want = e->len + n, cap = e->cap;
    while (cap < want) cap *= 2;
    if (cap > BRM_JSON_MAX_TEXT) cap = BRM_JSON_MAX_TEXT;
    int in_room = e->buf == e->room;
    char *p = e->alloc(e->ud, in_room ? NULL : e->buf, in_room ? 0 : e->cap, cap);
    if (!p) return encode_fail(e, "not enough memory to encode");
    if (in_room) memcpy(p, e->room, e->len);
    e->buf = p;
    e->cap = cap;
    return 0;
}

static int put(struct encoder *e, const char *s, size_t n) {
    if (n > e->cap - e->len && grow(e, n) < 0) return -1;
    memcpy(e->buf + e->len, s, n);
    e->len += n;
    return 0;
}

static int put_escape(struct encoder *e, unsigned char c) {
    static const char hex[] = "0123456789abcdef";
    char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
    switch (c) {
    case '"': return put(e, "\\\"", 2);
    case '\\': return put(e, "\\\\", 2);
    case '\b': return put(e, "\\b", 2);
    case '\f': return put(e, "\\f", 2);
    case '\n': return put(e, "\\n", 2);
    case '\r': return put(e, "\\r", 2);
    case '\t': return put(e, "\\t", 2);
    default: return put(e, esc, 6);
    }
}

/* The length of the run at S (of N bytes) that needs no escape: up to
 * the first control byte, '"' or '\\'. Eight bytes at a time, with the
 * bit tricks that tell whether a word holds a byte below 0x20 or a zero
 * byte (after XOR with the quote or the backslash): exact as yes or no,
 * so the word that says yes is searched byte by byte. */
static size_t plain_run(const char *s, size_t n) {
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, s + i, 8);
        uint64_t quote = x ^ (ones * '"'), slash = x ^ (ones * '\\');
        if ((((x - ones * 0x20) & ~x) | ((quote - ones) & ~quote) | ((slash - ones) & ~slash)) &
            highs)
            break;
    }
    while (i < n && (unsigned char)s[i] >= 0x20 && s[i] != '"' && s[i] != '\\') i++;
    return i;
}

/* '"', '\\' and control bytes are escaped; '/' and bytes from 0x80 up are
 * written as they are (a URL reads https://, and bytes stay bytes). */
static int encode_string(struct encoder *e, const char *s, size_t n) {
    size_t i = plain_run(s, n);
    if (i == n) { /* nothing to escape: the usual case, in one piece */
        if (n + 2 > e->cap - e->len && grow(e, n + 2) < 0) return -1;
        char *out = e->buf + e->len;
        out[0] = '"';
        memcpy(out + 1, s, n);
        out[n + 1] = '"';
        e->len += n + 2;
        return 0;
    }
    if (put(e, "\"", 1) < 0) return -1;
    for (size_t run = 0;;) { /* s[run..i) needs no escape */
        if (put(e, s + run, i - run) < 0) return -1;
        if (i == n) break;
        if (put_escape(e, (unsigned char)s[i++]) < 0) return -1;
        run = i;
        i += plain_run(s + i, n - i);
    }
    return put(e, "\"", 1);
}

/* Writes I in decimal into OUT (24 bytes); returns the length. */
static size_t format_integer(char *out, lua_Integer i) {
    char tmp[24];
    size_t n = 0, len = 0;
    /* In unsigned arithmetic, so that INT64_MIN negates. */
    uint64_t u = i < 0 ? 0 - (uint64_t)i : (uint64_t)i;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (i < 0) out[len++] = '-';
    while (n) out[len++] = tmp[--n];
    return len;
}

/* The fewest of 15, 16 or 17 significant digits that read back as V (17
 * always do). A whole V prints without a fraction. Returns the length. */
static size_t format_double(char *out, size_t size, double v) {
    int n = 0;
    for (int digits = 15; digits <= 17; digits++) {
        n = snprintf(out, size, "%.*g", digits, v);
        if (digits == 17 || strtod(out, NULL) == v) break;
    }
    return (size_t)n;
}

static int encode_number(struct encoder *e, int idx) {
    char text[32];
    size_t n;
    if (lua_isinteger(e->L, idx)) {
        n = format_integer(text, lua_tointeger(e->L, idx));
    } else {
        double v = lua_tonumber(e->L, idx);
        if (!isfinite(v)) return put(e, "null", 4); /* JSON has no NaN or infinity */
        n = format_double(text, sizeof(text), v);
    }
    return put(e, text, n);
}

/* An object's key: a string, or a number written as text. */
static int encode_key(struct encoder *e, int idx) {
    char text[34];
    size_t n;
    switch (lua_type(e->L, idx)) {
    case LUA_TSTRING: {
        const char *s = lua_tolstring(e->L, idx, &n); /* a string: nothing converts */
        return encode_string(e, s, n);
    }
    case LUA_TNUMBER:
        text[0] = '"';
        if (lua_isinteger(e->L, idx))
            n = 1 + format_integer(text + 1, lua_tointeger(e->L, idx));
        else
            n = 1 + format_double(text + 1, sizeof(text) - 2, lua_tonumber(e->L, idx));
        text[n++] = '"';
        return put(e, text, n);
    default: return encode_fail(e, "table key must be a number or a string");
    }
}

static int encode_value(struct encoder *e, int idx);

/* The length of the table at IDX as an array, or 0 when it is to be an
 * object: a key that is not a positive integer, or an array too sparse
 * (lua-cjson's rule, as brume set it: its largest key passes both 10 and
 * twice the number of keys). Leaves the stack as it was. */
static lua_Integer array_length(lua_State *L, int idx) {
    lua_Integer max = 0, count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        lua_Integer k = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
        if (k < 1) {
            lua_pop(L, 1);
            return 0;
        }
        if (k > max) max = k;
        count++;
    }
    if (max > 10 && max - count > count) return 0;
    return max;
}

static int encode_array(struct encoder *e, int idx, lua_Integer n) {
    if (put(e, "[", 1) < 0) return -1;
    for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1 && put(e, ",", 1) < 0) return -1;
        lua_rawgeti(e->L, idx, i); /* a hole is nil: null */
        int rc = encode_value(e, lua_gettop(e->L));
        lua_pop(e->L, 1);
        if (rc < 0) return -1;
    }
    return put(e, "]", 1);
}

static int encode_object(struct encoder *e, int idx) {
    lua_State *L = e->L;
    int first = 1;
    if (put(e, "{", 1) < 0) return -1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int top = lua_gettop(L);
        if ((!first && put(e, ",", 1) < 0) || encode_key(e, top - 1) < 0 || put(e, ":", 1) < 0 ||
            encode_value(e, top) < 0) {
            lua_pop(L, 2);
            return -1;
        }
        first = 0;
        lua_pop(L, 1);
    }
    return put(e, "}", 1);
}

static int encode_table(struct encoder *e, int idx) {
    if (e->depth == BRM_JSON_MAX_DEPTH)
        return encode_fail(e, "tables nested deeper than %d levels (does one contain itself?)",
                           BRM_JSON_MAX_DEPTH);
    /* lua_checkstack, unlike luaL_checkstack, does not raise. */
    if (!lua_checkstack(e->L, 3)) return encode_fail(e, "not enough memory to encode");
    e->depth++;
    lua_Integer n = array_length(e->L, idx);
    int rc = n > 0 ? encode_array(e, idx, n) : encode_object(e, idx);
    e->depth--;
    return rc;
}

/* Reads only: raw table access, no metamethod, no conversion in place, so
 * nothing raises while the C buffer is held. */
static int encode_value(struct encoder *e, int idx) {
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: return put(e, "null", 4);
    case LUA_TBOOLEAN: return lua_toboolean(L, idx) ? put(e, "true", 4) : put(e, "false", 5);
    case LUA_TNUMBER: return encode_number(e, idx);
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        return encode_string(e, s, n);
    }
    case LUA_TTABLE: return encode_table(e, idx);
    case LUA_TLIGHTUSERDATA:
        if (!lua_touserdata(L, idx)) return put(e, "null", 4); /* brume.null */
        /* fall through */
    default: return encode_fail(e, "cannot encode a %s", luaL_typename(L, idx));
    }
}

/* lua_pcall'd: makes the Lua string of the encoder at argument 1. */
static int push_text(lua_State *L) {
    const struct encoder *e = lua_touserdata(L, 1);
    lua_pushlstring(L, e->buf, e->len);
    return 1;
}

int brm_json_encode(lua_State *L, int idx, struct brm_err *err) {
    struct encoder e = { .L = L, .err = err, .cap = ENCODE_ROOM };
    e.buf = e.room;
    e.alloc = lua_getallocf(L, &e.ud);
    idx = lua_absindex(L, idx);
    int rc = encode_value(&e, idx);
    if (rc == 0) {
        /* The copy into a Lua string can run out of memory: protected. */
        if (!lua_checkstack(L, 2)) {
            rc = encode_fail(&e, "not enough memory to encode");
        } else {
            lua_pushcfunction(L, push_text);
            lua_pushlightuserdata(L, &e);
            if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
                lua_pop(L, 1);
                rc = encode_fail(&e, "not enough memory to encode");
            }
        }
    }
    if (e.buf != e.room) e.alloc(e.ud, e.buf, e.cap, 0);
    return rc;
}

/* ---- the Lua module ----------------------------------------------------- */

static int api_encode(lua_State *L) {
    struct brm_err err;
    luaL_checkany(L, 1);
    if (brm_json_encode(L, 1, &err) < 0) return luaL_error(L, "%s", err.msg);
    return 1;
}

static int api_decode(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    struct brm_err err;
    if (brm_json_decode(L, s, len, &err) < 0) return luaL_error(L, "%s", err.msg);
    return 1;
}

static int null_tostring(lua_State *L) {
    lua_pushliteral(L, "null");
    return 1;
}

void brm_json_open(lua_State *L) {
    static const luaL_Reg funcs[] = { { "encode", api_encode },
                                      { "decode", api_decode },
                                      { NULL, NULL } };
    /* JSON null is a light userdata, and light userdata share one
     * metatable: give it a name when printed, and lock it. */
    lua_pushlightuserdata(L, NULL);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, null_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
}

/* ---- Mist's envelope ---------------------------------------------------- */

static const char *const known_topics[] = {
    "alarms",        "asset-raw",         "asset-raw-rssi",      "audits",
    "client-info",   "client-join",       "client-latency",      "client-sessions",
    "device-events", "device-updowns",    "discovered-raw-rssi", "guest-authorizations",
    "location",      "location-asset",    "location-centrak",    "location-client",
    "location-sdk",  "location-unclient", "minis-application",   "minis-reachability",
    "mxedge-events", "nac-accounting",    "nac-events",          "occupancy-alerts",
    "ping",          "rssizone",          "sdkclient-scan-data", "site-sle",
    "vbeacon",       "wifi-conn-raw",     "wifi-unconn-raw",     "zone",
};

int brm_topic_normalize(const char *s, size_t n, char *out, size_t size) {
    if (n >= size) return -1;
    for (size_t i = 0; i < n; i++) out[i] = s[i] == '_' ? '-' : s[i];
    out[n] = '\0';
    return 0;
}

int brm_topic_known(const char *name) {
    for (size_t i = 0; i < BRM_ARRAY_LEN(known_topics); i++)
        if (strcmp(name, known_topics[i]) == 0) return 1;
    return 0;
}

/* Checks the decoded envelope at IDX; fills ENV. EVENTS_KIND is how the
 * body's "events" began ('[' or '{'), which the tables cannot tell when
 * empty. */
static int check_envelope(lua_State *L, int idx, int events_kind, struct brm_envelope *env,
                          struct brm_err *err) {
    size_t tlen;
    if (lua_getfield(L, idx, "topic") != LUA_TSTRING) {
        brm_err_set(err, "no string \"topic\" in the body");
        goto fail;
    }
    const char *topic = lua_tolstring(L, -1, &tlen);
    if (tlen == 0 || memchr(topic, '\0', tlen) ||
        brm_topic_normalize(topic, tlen, env->name, sizeof(env->name)) < 0) {
        brm_err_set(err, "\"topic\" must be a name of 1 to %d characters", BRM_TOPIC_MAX - 1);
        goto fail;
    }
    memcpy(env->topic, topic, tlen + 1);
    env->known = brm_topic_known(env->name);
    lua_pop(L, 1);

    if (lua_getfield(L, idx, "events") != LUA_TTABLE) {
        brm_err_set(err, "no \"events\" array in the body");
        goto fail;
    }
    if (events_kind != '[') {
        brm_err_set(err, "\"events\" is not an array");
        goto fail;
    }
    int events = lua_gettop(L);
    env->nevents = lua_rawlen(L, events);
    for (size_t i = 1; i <= env->nevents; i++) {
        /* An array decodes to a table too: one with a length. (An empty
         * array passes as an object without fields.) */
        if (lua_rawgeti(L, events, (lua_Integer)i) != LUA_TTABLE || lua_rawlen(L, -1) > 0) {
            brm_err_set(err, "events[%zu] is not an object", i);
            lua_pop(L, 1);
            goto fail;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
fail:
    lua_pop(L, 1);
    return -1;
}

int brm_json_envelope(lua_State *L, const char *body, size_t len, struct brm_envelope *env,
                      struct brm_err *err) {
    struct brm_err jerr;
    struct decoder d;
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    if (i == len) {
        brm_err_set(err, "empty body");
        return -1;
    }
    if (body[i] != '{') {
        brm_err_set(err, "body is not a JSON object");
        return -1;
    }
    decoder_init(&d, L, body, len, &jerr);
    d.watch = "events";
    d.watch_len = strlen(d.watch);
    int rc = decode_text(&d);
    if (rc < 0) {
        if (rc == -2)
            brm_err_set(err, "%s", jerr.msg);
        else
            brm_err_set(err, "invalid JSON: %s", jerr.msg);
        return rc;
    }
    if (check_envelope(L, lua_gettop(L), d.watch_kind, env, err) < 0) {
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}
