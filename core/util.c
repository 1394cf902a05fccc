#define _GNU_SOURCE
#include "util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void brm_err_clear(struct brm_err *e) {
    e->msg[0] = '\0';
    e->file[0] = '\0';
    e->line = 0;
}

static void err_vset(struct brm_err *e, const char *file, int line, const char *fmt, va_list ap) {
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    snprintf(e->file, sizeof(e->file), "%s", file ? file : "");
    e->line = line;
}

void brm_err_set(struct brm_err *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    err_vset(e, NULL, 0, fmt, ap);
    va_end(ap);
}

void brm_err_at(struct brm_err *e, const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    err_vset(e, file, line, fmt, ap);
    va_end(ap);
}

void brm_err_format(const struct brm_err *e, char *buf, size_t size) {
    if (e->file[0] && e->line > 0)
        snprintf(buf, size, "%s:%d: %s", e->file, e->line, e->msg);
    else if (e->file[0])
        snprintf(buf, size, "%s: %s", e->file, e->msg);
    else
        snprintf(buf, size, "%s", e->msg);
}

void brm_errors_add(struct brm_errors *l, const struct brm_err *e) {
    if (l->n == BRM_MAX_ERRORS) {
        struct brm_err *last = &l->v[l->n - 1];
        l->more++;
        brm_err_at(last, "", 0, "... and %zu more error%s", l->more + 1,
                   l->more + 1 == 1 ? "" : "s");
        return;
    }
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 8;
        l->v = brm_xrealloc(l->v, l->cap * sizeof(*l->v));
    }
    l->v[l->n++] = *e;
}

void brm_errors_addf(struct brm_errors *l, const char *file, int line, const char *fmt, ...) {
    struct brm_err e;
    va_list ap;
    va_start(ap, fmt);
    err_vset(&e, file, line, fmt, ap);
    va_end(ap);
    brm_errors_add(l, &e);
}

void brm_errors_reset(struct brm_errors *l) {
    free(l->v);
    l->v = NULL;
    l->n = l->cap = l->more = 0;
}

size_t brm_errors_count(const struct brm_errors *l) {
    return l->n + l->more;
}

int brm_errors_full(const struct brm_errors *l) {
    return l->n == BRM_MAX_ERRORS;
}

static void oom(size_t n) {
    fprintf(stderr, "brume: out of memory allocating %zu bytes\n", n);
    abort();
}

void *brm_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *brm_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) oom(n * size);
    return p;
}

void *brm_xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) oom(n);
    return p;
}

char *brm_xstrdup(const char *s) {
    return brm_xstrndup(s, strlen(s));
}

char *brm_xstrndup(const char *s, size_t n) {
    char *d = brm_xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *brm_xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = brm_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

void brm_buf_init(struct brm_buf *b) {
    b->data = NULL;
    b->len = b->cap = 0;
}

void brm_buf_reset(struct brm_buf *b) {
    free(b->data);
    brm_buf_init(b);
}

void brm_buf_reserve(struct brm_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) cap *= 2;
    b->data = brm_xrealloc(b->data, cap);
    b->cap = cap;
}

void brm_buf_append(struct brm_buf *b, const void *p, size_t n) {
    brm_buf_reserve(b, n);
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void brm_buf_puts(struct brm_buf *b, const char *s) {
    brm_buf_append(b, s, strlen(s));
}

void brm_buf_printf(struct brm_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    brm_buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void brm_buf_json_string(struct brm_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    brm_buf_reserve(b, n + 2);
    b->data[b->len++] = '"';
    size_t run = 0; /* start of the pending run of bytes that need no escape */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) continue;
        brm_buf_append(b, s + run, i - run);
        run = i + 1;
        if (c == '"' || c == '\\') {
            char esc[2] = { '\\', (char)c };
            brm_buf_append(b, esc, 2);
        } else if (c == '\n') {
            brm_buf_append(b, "\\n", 2);
        } else if (c == '\t') {
            brm_buf_append(b, "\\t", 2);
        } else if (c == '\r') {
            brm_buf_append(b, "\\r", 2);
        } else {
            char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            brm_buf_append(b, esc, 6);
        }
    }
    brm_buf_append(b, s + run, n - run);
    brm_buf_append(b, "\"", 1);
}

/* Splits "12.5ms" into its number and unit; -1 unless it is of that form. */
static int split_quantity(const char *s, double *num, const char **unit) {
    const char *p = s;
    if (!isdigit((unsigned char)*p)) return -1;
    while (isdigit((unsigned char)*p)) p++;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p)) return -1;
        while (isdigit((unsigned char)*p)) p++;
    }
    char *end;
    errno = 0;
    *num = strtod(s, &end);
    if (errno || end != p) return -1;
    while (*p == ' ') p++;
    *unit = p;
    return 0;
}

int brm_parse_size(const char *s, uint64_t *out) {
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {
        { "", 1 },
        { "b", 1 },
        { "k", 1024 },
        { "kb", 1024 },
        { "kib", 1024 },
        { "m", 1024 * 1024 },
        { "mb", 1024 * 1024 },
        { "mib", 1024 * 1024 },
        { "g", 1024ull * 1024 * 1024 },
        { "gb", 1024ull * 1024 * 1024 },
        { "gib", 1024ull * 1024 * 1024 },
    };
    double num;
    const char *unit;
    if (split_quantity(s, &num, &unit) < 0) return -1;
    for (size_t i = 0; i < BRM_ARRAY_LEN(units); i++) {
        if (strcasecmp(unit, units[i].unit) == 0) {
            double v = num * (double)units[i].mult;
            if (v >= 18446744073709551615.0) return -1;
            *out = (uint64_t)v;
            return 0;
        }
    }
    return -1;
}

int brm_parse_duration(const char *s, double *out) {
    static const struct {
        const char *unit;
        double mult;
    } units[] = {
        { "", 1 }, { "ms", 0.001 }, { "s", 1 }, { "m", 60 }, { "h", 3600 }, { "d", 86400 },
    };
    double num;
    const char *unit;
    if (split_quantity(s, &num, &unit) < 0) return -1;
    for (size_t i = 0; i < BRM_ARRAY_LEN(units); i++) {
        if (strcmp(unit, units[i].unit) == 0) {
            *out = num * units[i].mult;
            return 0;
        }
    }
    return -1;
}

/* MurmurHash3's finalizer: every input bit moves every output bit. */
static uint64_t fmix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* 8 bytes as a little-endian number: the same digest on every machine. */
static uint64_t load8(const unsigned char *s) {
    uint64_t w;
    memcpy(&w, s, sizeof(w));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

static uint64_t load_le64(const unsigned char *s, size_t n) {
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++) w |= (uint64_t)s[i] << (8 * i);
    return w;
}

uint64_t brm_hash64(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ ((uint64_t)n * 0x87c37b91114253d5ull);
    for (; n >= 8; s += 8, n -= 8) {
        uint64_t w = load8(s) * 0x87c37b91114253d5ull;
        w = (w << 31) | (w >> 33);
        h ^= w * 0x4cf5ad432745937full;
        h = ((h << 27) | (h >> 37)) * 5 + 0x52dce729;
    }
    if (n) h ^= fmix64(load_le64(s, n) ^ 0x2545f4914f6cdd1dull);
    return fmix64(h);
}

void brm_hex_encode(const unsigned char *in, size_t n, char *out) {
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int brm_hex_decode(const char *in, size_t n, unsigned char *out) {
    for (size_t i = 0; i < n; i++) {
        int hi = hexval((unsigned char)in[2 * i]), lo = hexval((unsigned char)in[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t brm_base64_encoded_len(size_t n) {
    return (n + 2) / 3 * 4;
}

void brm_base64_encode(const unsigned char *in, size_t n, char *out) {
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *out++ = b64[v >> 18];
        *out++ = b64[v >> 12 & 63];
        *out++ = b64[v >> 6 & 63];
        *out++ = b64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        *out++ = b64[v >> 18];
        *out++ = b64[v >> 12 & 63];
        *out++ = i + 1 < n ? b64[v >> 6 & 63] : '=';
        *out++ = '=';
    }
    *out = '\0';
}

long brm_base64_decode(const char *in, size_t n, unsigned char *out) {
    while (n > 0 && in[n - 1] == '=') n--;
    if (n % 4 == 1) return -1;
    uint32_t acc = 0;
    int bits = 0;
    long len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = memchr(b64, in[i], 64);
        if (!p || in[i] == '\0') return -1;
        acc = acc << 6 | (uint32_t)(p - b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[len++] = (unsigned char)(acc >> bits);
        }
    }
    return len;
}

double brm_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

uint64_t brm_time_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t brm_time_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t brm_time_mono_ms(void) {
    return brm_time_mono_ns() / 1000000u;
}

void brm_time_iso8601(double t, char *buf, size_t size) {
    time_t secs = (time_t)t;
    int ms = (int)((t - (double)secs) * 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
}

/* Reads exactly N digits at *P into *OUT, moving *P past them. */
static int digits(const char **p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i])) return -1;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

static int days_in_month(int year, int month) {
    static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return days[month - 1] + (month == 2 && leap);
}

/* "+02:00", "-0530", "+02" or "Z" at P (which it moves past) -> seconds
 * east of UTC in *OFFSET. */
static int parse_offset(const char **p, int *offset, struct brm_err *err) {
    int sign = **p == '-' ? -1 : 1, h, m = 0;
    if (**p == 'Z' || **p == 'z') {
        (*p)++;
        *offset = 0;
        return 0;
    }
    (*p)++; /* the sign */
    if (digits(p, 2, &h) < 0) return -1;
    if (**p == ':') (*p)++;
    if (isdigit((unsigned char)**p) && digits(p, 2, &m) < 0) return -1;
    if (h > 23 || m > 59) {
        brm_err_set(err, "the offset %c%02d:%02d is not one a time zone has", sign < 0 ? '-' : '+',
                    h, m);
        return -2;
    }
    *offset = sign * (h * 3600 + m * 60);
    return 0;
}

/* An ISO 8601 date or time: 2026-11-21, 2026-11-21T10:00[:00[.123]] (or a
 * space for the T), with an optional Z or UTC offset. -1 when S is not of
 * that form, -2 when it is but names no real time (ERR says why). */
static int parse_iso8601(const char *s, double *out, struct brm_err *err) {
    const char *p = s;
    int y, mo, d, h = 0, mi = 0, sec = 0, offset = 0;
    double frac = 0;
    if (digits(&p, 4, &y) < 0 || *p++ != '-' || digits(&p, 2, &mo) < 0 || *p++ != '-' ||
        digits(&p, 2, &d) < 0)
        return -1;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if (digits(&p, 2, &h) < 0 || *p++ != ':' || digits(&p, 2, &mi) < 0) return -1;
        if (*p == ':') {
            p++;
            if (digits(&p, 2, &sec) < 0) return -1;
            if (*p == '.' || *p == ',') {
                double scale = 0.1;
                if (!isdigit((unsigned char)*++p)) return -1;
                for (; isdigit((unsigned char)*p); p++, scale /= 10) frac += (*p - '0') * scale;
            }
        }
        if (*p == 'Z' || *p == 'z' || *p == '+' || *p == '-') {
            int rc = parse_offset(&p, &offset, err);
            if (rc < 0) return rc;
        }
    }
    if (*p) return -1;
    if (mo < 1 || mo > 12) {
        brm_err_set(err, "there is no month %d (months are 01 to 12)", mo);
        return -2;
    }
    if (d < 1 || d > days_in_month(y, mo)) {
        brm_err_set(err, "%04d-%02d has no day %d (it has %d)", y, mo, d, days_in_month(y, mo));
        return -2;
    }
    if (h > 23 || mi > 59 || sec > 59) {
        brm_err_set(err, "%02d:%02d:%02d is not a time of day", h, mi, sec);
        return -2;
    }
    struct tm tm = { .tm_year = y - 1900,
                     .tm_mon = mo - 1,
                     .tm_mday = d,
                     .tm_hour = h,
                     .tm_min = mi,
                     .tm_sec = sec };
    *out = (double)timegm(&tm) + frac - offset;
    return 0;
}

int brm_parse_time(const char *s, double now, double *out, struct brm_err *err) {
    char ago[64];
    size_t n = strlen(s);
    double v;
    /* "2h ago" reads as "2h". */
    if (n > 4 && n - 4 < sizeof(ago) && strcmp(s + n - 4, " ago") == 0) {
        snprintf(ago, sizeof(ago), "%.*s", (int)(n - 4), s);
        s = ago;
    }
    size_t number = strspn(s, "0123456789.");
    if (number == strlen(s) && number > 0) { /* a bare number: seconds since the epoch */
        char *end;
        errno = 0;
        v = strtod(s, &end);
        if (errno || *end || s == ago) goto not_a_time;
        if (v < 1e9) {
            brm_err_set(err,
                        "a bare number is seconds since the epoch, and %s is before 2001;"
                        " for %s seconds ago write %ss",
                        s, s, s);
            return -1;
        }
        if (v >= 1e11) {
            brm_err_set(err,
                        "%s seconds since the epoch is past the year 5000; milliseconds?"
                        " (brume takes seconds)",
                        s);
            return -1;
        }
        *out = v;
        return 0;
    }
    if (number > 0 && brm_parse_duration(s, &v) == 0) {
        *out = now - v;
        return 0;
    }
    if (s != ago) {
        int rc = parse_iso8601(s, out, err);
        if (rc == 0) return 0;
        if (rc == -2) return -1;
    }
not_a_time:
    brm_err_set(err, "not a time");
    return -1;
}

char *brm_path_join(const char *dir, const char *rel) {
    if (!dir || rel[0] == '/' || strcmp(dir, ".") == 0) return brm_xstrdup(rel);
    size_t n = strlen(dir);
    return brm_xasprintf("%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", rel);
}

char *brm_path_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return brm_xstrdup(".");
    if (slash == path) return brm_xstrdup("/");
    return brm_xstrndup(path, (size_t)(slash - path));
}

char *brm_path_display(const char *path) {
    char cwd[PATH_MAX], real[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd)) || !realpath(path, real)) return brm_xstrdup(path);
    size_t n = strlen(cwd);
    if (strncmp(real, cwd, n) == 0 && real[n] == '/') return brm_xstrdup(real + n + 1);
    return brm_xstrdup(real);
}

int brm_read_file(const char *path, size_t max, struct brm_buf *out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) < 0) goto fail;
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        goto fail;
    }
    for (;;) {
        brm_buf_reserve(out, 4096);
        ssize_t r = read(fd, out->data + out->len, out->cap - out->len - 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) goto fail;
        if (r == 0) break;
        out->len += (size_t)r;
        if (out->len > max) {
            errno = EFBIG;
            goto fail;
        }
    }
    out->data[out->len] = '\0';
    close(fd);
    return 0;
fail:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

int brm_split_addr(const char *addr, char *host, size_t hostlen, int *port) {
    const char *colon;
    size_t hl;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (!close || close[1] != ':') return -1;
        hl = (size_t)(close - addr - 1);
        addr++;
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon) return -1;
        hl = (size_t)(colon - addr);
    }
    if (hl >= hostlen) return -1;
    memcpy(host, addr, hl);
    host[hl] = '\0';
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end || errno || p < 0 || p > 65535) return -1;
    *port = (int)p;
    return 0;
}

int brm_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

void brm_thread_name(const char *name) {
    char kept[16]; /* the kernel's limit, with the NUL: a longer name is refused */
    snprintf(kept, sizeof(kept), "%s", name);
    pthread_setname_np(pthread_self(), kept);
}

void brm_mkdirs(const char *path, int mode) {
    char *copy = brm_xstrdup(path);
    for (char *p = copy + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        mkdir(copy, (mode_t)mode);
        *p = '/';
    }
    mkdir(copy, (mode_t)mode);
    free(copy);
}

static int sockaddr_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127; /* 127.0.0.0/8 */
    }
    if (sa->sa_family != AF_INET6) return 0;
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a6) || (IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127);
}

/* Every address HOST stands for is a loopback one. NUMERIC: no lookup. */
static int host_loopback(const char *host, int numeric) {
    struct addrinfo hints = { 0 }, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | (numeric ? AI_NUMERICHOST : 0);
    if (!host[0] || getaddrinfo(host, NULL, &hints, &ai) != 0) return 0;
    int all = 1;
    for (const struct addrinfo *p = ai; p; p = p->ai_next) all &= sockaddr_loopback(p->ai_addr);
    freeaddrinfo(ai);
    return all;
}

int brm_addr_loopback(const char *addr) {
    char host[256];
    int port;
    if (brm_split_addr(addr, host, sizeof(host), &port) < 0) return 0;
    /* Other names are not looked up: what DNS says now need not be what
     * the listener binds to later. */
    if (strcmp(host, "localhost") == 0) return host_loopback(host, 0);
    return host_loopback(host, 1);
}

/* Levenshtein distance, to suggest the name a typo meant. */
static size_t distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), prev[64], cur[64];
    if (la >= 63 || lb >= 63) return 99;
    for (size_t j = 0; j <= lb; j++) prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (lb + 1) * sizeof(size_t));
    }
    return prev[lb];
}

void brm_suggest(const char *word, const char *const *names, size_t n, char *hint, size_t size) {
    const char *best = NULL;
    size_t len = strlen(word), bestd = len < 3 ? len : 3; /* 's' is no typo of 'f' */
    for (size_t i = 0; i < n; i++) {
        size_t d = distance(word, names[i]);
        if (d < bestd) bestd = d, best = names[i];
    }
    snprintf(hint, size, best ? " (did you mean '%s'?)" : "", best);
}
