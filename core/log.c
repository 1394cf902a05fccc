#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
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

/* logfmt quotes a value that is empty or holds a space, '=', '"' or a
 * control character; JSON escaping covers the rest. */
static void logfmt_value(struct brm_buf *b, const char *v) {
    size_t n = strlen(v);
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

void brm_log_kv(enum brm_log_level level, const char *msg, const char *const *kv, size_t nkv) {
    if (!brm_log_enabled(level)) return;
    char ts[40];
    struct brm_buf b;
    brm_buf_init(&b);
    brm_time_iso8601(brm_time_now(), ts, sizeof(ts));
    int json = atomic_load_explicit(&log_format, memory_order_relaxed) == BRM_LOG_JSON;
    if (json) {
        brm_buf_printf(&b, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":", ts, level_names[level]);
        brm_buf_json_string(&b, msg, strlen(msg));
    } else {
        brm_buf_printf(&b, "ts=%s level=%s msg=", ts, level_names[level]);
        logfmt_value(&b, msg);
    }
    for (size_t i = 0; i < nkv; i++) {
        const char *k = kv[2 * i], *v = kv[2 * i + 1];
        if (!v) continue;
        if (json) {
            brm_buf_puts(&b, ",");
            brm_buf_json_string(&b, k, strlen(k));
            brm_buf_puts(&b, ":");
            brm_buf_json_string(&b, v, strlen(v));
        } else {
            brm_buf_printf(&b, " %s=", k);
            logfmt_value(&b, v);
        }
    }
    brm_buf_puts(&b, json ? "}\n" : "\n");
    /* One write per record: lines from several threads stay whole. */
    size_t off = 0;
    while (off < b.len) {
        ssize_t w = write(STDERR_FILENO, b.data + off, b.len - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    brm_buf_reset(&b);
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
