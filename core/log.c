#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static _Atomic int min_level = BRM_LOG_INFO;
static _Atomic int log_format = BRM_LOG_LOGFMT;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void brm_log_setup(enum brm_log_level level, enum brm_log_format format) {
    atomic_store(&min_level, (int)level);
    atomic_store(&log_format, (int)format);
}

int brm_log_enabled(enum brm_log_level level) {
    return (int)level >= atomic_load_explicit(&min_level, memory_order_relaxed);
}

int brm_log_level_parse(const char *name) {
    for (size_t i = 0; i < BRM_ARRAY_LEN(level_names); i++)
        if (strcmp(name, level_names[i]) == 0) return (int)i;
    return -1;
}

/* logfmt quotes text that is empty or holds a space, '=', '"' or a control
 * character (JSON escaping covers the rest): keys as well as values, so no
 * text can end a record and start another. */
static void logfmt_text(struct brm_buf *b, const char *v, size_t n) {
    int quote = n == 0;
    for (size_t i = 0; i < n && !quote; i++) {
        unsigned char c = (unsigned char)v[i];
        quote = c <= ' ' || c == '=' || c == '"' || c == 0x7f;
    }
    if (quote)
        brm_buf_json_string(b, v, n);
    else
        brm_buf_append(b, v, n);
}

/* Starts a record: ts, level, msg. */
static void begin(struct brm_buf *b, int json, enum brm_log_level level, const char *msg,
                  size_t len) {
    char ts[40];
    brm_time_iso8601(brm_time_now(), ts, sizeof(ts));
    if (json) {
        brm_buf_printf(b, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":", ts, level_names[level]);
        brm_buf_json_string(b, msg, len);
    } else {
        brm_buf_printf(b, "ts=%s level=%s msg=", ts, level_names[level]);
        logfmt_text(b, msg, len);
    }
}

static void add_pair(struct brm_buf *b, int json, const char *k, size_t klen, const char *v,
                     size_t vlen) {
    brm_buf_puts(b, json ? "," : " ");
    if (json) {
        brm_buf_json_string(b, k, klen);
        brm_buf_puts(b, ":");
        brm_buf_json_string(b, v, vlen);
    } else {
        logfmt_text(b, k, klen);
        brm_buf_puts(b, "=");
        logfmt_text(b, v, vlen);
    }
}

/* Ends the record and writes it: one write per record, so that lines from
 * several threads stay whole. */
static void finish(struct brm_buf *b, int json) {
    brm_buf_puts(b, json ? "}\n" : "\n");
    size_t off = 0;
    while (off < b->len) {
        ssize_t w = write(STDERR_FILENO, b->data + off, b->len - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    brm_buf_reset(b);
}

static int json_format(void) {
    return atomic_load_explicit(&log_format, memory_order_relaxed) == BRM_LOG_JSON;
}

void brm_log_kv(enum brm_log_level level, const char *msg, const char *const *kv, size_t nkv) {
    if (!brm_log_enabled(level)) return;
    struct brm_buf b;
    brm_buf_init(&b);
    int json = json_format();
    begin(&b, json, level, msg, strlen(msg));
    for (size_t i = 0; i < nkv; i++) {
        const char *k = kv[2 * i], *v = kv[2 * i + 1];
        if (v) add_pair(&b, json, k, strlen(k), v, strlen(v));
    }
    finish(&b, json);
}

void brm_log(enum brm_log_level level, const char *msg, ...) {
    if (!brm_log_enabled(level)) return;
    const char *kv[32];
    size_t n = 0;
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k) break;
        const char *v = va_arg(ap, const char *);
        if (n + 2 > BRM_ARRAY_LEN(kv)) break;
        kv[n++] = k;
        kv[n++] = v;
    }
    va_end(ap);
    brm_log_kv(level, msg, kv, n / 2);
}

/* ---- records of user text ------------------------------------------------ */

/* What is left of a record's room for user text, and what was cut. */
struct room {
    size_t left, cut;
    struct brm_buf piece; /* a cut string with its marker */
};

/* Takes what fits of S (N bytes) into the room; sets *OUT, *OUTLEN. */
static void fit(struct room *r, const char *s, size_t n, const char **out, size_t *outlen) {
    if (n <= r->left) {
        r->left -= n;
        *out = s;
        *outlen = n;
        return;
    }
    size_t keep = r->left;
    while (keep > 0 && keep < n && ((unsigned char)s[keep] & 0xC0) == 0x80)
        keep--; /* not in the middle of a UTF-8 character */
    r->cut += n - keep;
    r->left = 0;
    brm_buf_reset(&r->piece);
    brm_buf_append(&r->piece, s, keep);
    brm_buf_puts(&r->piece, "...");
    *out = r->piece.data;
    *outlen = r->piece.len;
}

static int reserved(const char *k, size_t klen, const char *const *fixed, size_t nfixed) {
    static const char *const own[] = { "ts", "level", "msg", "truncated" };
    for (size_t i = 0; i < BRM_ARRAY_LEN(own); i++)
        if (klen == strlen(own[i]) && memcmp(k, own[i], klen) == 0) return 1;
    for (size_t i = 0; i < nfixed; i++)
        if (klen == strlen(fixed[2 * i]) && memcmp(k, fixed[2 * i], klen) == 0) return 1;
    return 0;
}

void brm_log_user(enum brm_log_level level, const char *msg, size_t msglen, size_t omitted,
                  const char *const *fixed, size_t nfixed, const struct brm_log_field *fields,
                  size_t nfields) {
    if (!brm_log_enabled(level)) return;
    struct brm_buf b, key;
    struct room r = { BRM_LOG_USER_MAX, omitted, { 0 } };
    const char *s;
    size_t n;
    int json = json_format();
    brm_buf_init(&b);
    brm_buf_init(&key);
    brm_buf_init(&r.piece);
    fit(&r, msg, msglen, &s, &n);
    begin(&b, json, level, s, n);
    for (size_t i = 0; i < nfixed; i++)
        if (fixed[2 * i + 1])
            add_pair(&b, json, fixed[2 * i], strlen(fixed[2 * i]), fixed[2 * i + 1],
                     strlen(fixed[2 * i + 1]));
    for (size_t i = 0; i < nfields; i++) {
        const struct brm_log_field *f = &fields[i];
        if (r.left == 0) { /* no room: the field is left out whole */
            r.cut += f->klen + f->vlen;
            continue;
        }
        brm_buf_reset(&key);
        if (reserved(f->key, f->klen, fixed, nfixed)) brm_buf_puts(&key, "field.");
        fit(&r, f->key, f->klen, &s, &n);
        brm_buf_append(&key, s, n);
        fit(&r, f->value, f->vlen, &s, &n);
        add_pair(&b, json, key.data, key.len, s, n);
    }
    if (r.cut) {
        char cut[32];
        snprintf(cut, sizeof(cut), "%zu", r.cut);
        add_pair(&b, json, "truncated", 9, cut, strlen(cut));
    }
    finish(&b, json);
    brm_buf_reset(&key);
    brm_buf_reset(&r.piece);
}

int brm_log_limit_admit(struct brm_log_limit *lim, uint64_t now_ms, uint64_t *report) {
    *report = 0;
    if (lim->last_ms == 0) {
        lim->tokens = BRM_LOG_BURST;
        lim->last_ms = lim->window_ms = now_ms;
    }
    if (now_ms - lim->window_ms >= BRM_LOG_WINDOW_MS) {
        *report = lim->dropped;
        lim->dropped = 0;
        lim->window_ms = now_ms;
    }
    lim->tokens += (double)(now_ms - lim->last_ms) * BRM_LOG_RATE / 1000.0;
    if (lim->tokens > BRM_LOG_BURST) lim->tokens = BRM_LOG_BURST;
    lim->last_ms = now_ms;
    if (lim->tokens < 1) {
        lim->dropped++;
        return 0;
    }
    lim->tokens -= 1;
    return 1;
}

void brm_log_limit_spend(struct brm_log_limit *lim, size_t bytes) {
    lim->tokens -= (double)(bytes / 1024);
}
