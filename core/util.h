/*
 * util: the small things every module needs. Allocation that aborts on
 * failure (as Redis's zmalloc does: a daemon that cannot allocate a few bytes
 * cannot do anything useful), growable byte buffers, error records that
 * carry file:line up to the boundary that logs them, parsing of the sizes
 * and durations users write in the config, hex and base64, clocks, paths,
 * and the "did you mean" of a misspelt name. Depends on libc only.
 */
#ifndef BRM_UTIL_H
#define BRM_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define BRM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Outcomes callers branch on. */
enum brm_status {
    BRM_OK = 0,
    BRM_ERR,          /* generic failure, detail in struct brm_err */
    BRM_UNAUTHORIZED, /* signature missing or wrong */
    BRM_BAD_REQUEST,  /* body is not a Mist envelope */
    BRM_UNAVAILABLE,  /* overloaded or the store failed: try again later */
    BRM_BUSY,         /* met rule state not stored yet: run it again later */
    BRM_TOO_LARGE,    /* a body too large for the rules' memory once decoded */
};

/* An error with an optional source position (a rule or config line). */
struct brm_err {
    char msg[512];
    char file[256]; /* "" when not about a file */
    int line;       /* 0 when unknown */
};

void brm_err_clear(struct brm_err *e);
void brm_err_set(struct brm_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void brm_err_at(struct brm_err *e, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Writes "file:line: msg" (or the parts that are known) into BUF. */
void brm_err_format(const struct brm_err *e, char *buf, size_t size);

/* A list of errors, for commands that report every problem (brume check).
 * It keeps BRM_MAX_ERRORS: past them its last entry says how many more
 * there were (a config's loop can make a million mistakes, 768 bytes
 * each). brm_errors_count tells whether any came since a count taken. */
#define BRM_MAX_ERRORS 100
struct brm_errors {
    struct brm_err *v;
    size_t n, cap;
    size_t more; /* past BRM_MAX_ERRORS - 1: told of in v[n - 1] */
};

void brm_errors_add(struct brm_errors *l, const struct brm_err *e);
void brm_errors_addf(struct brm_errors *l, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void brm_errors_reset(struct brm_errors *l);
size_t brm_errors_count(const struct brm_errors *l); /* every one added */
/* 1 when L keeps no more: what is added now is only counted. */
int brm_errors_full(const struct brm_errors *l);

void *brm_xmalloc(size_t n);
void *brm_xcalloc(size_t n, size_t size);
void *brm_xrealloc(void *p, size_t n);
char *brm_xstrdup(const char *s);
char *brm_xstrndup(const char *s, size_t n);
char *brm_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A growable byte buffer, always NUL-terminated when data != NULL. */
struct brm_buf {
    char *data;
    size_t len, cap;
};

void brm_buf_init(struct brm_buf *b);
void brm_buf_reset(struct brm_buf *b); /* frees the memory */
void brm_buf_reserve(struct brm_buf *b, size_t extra);
void brm_buf_append(struct brm_buf *b, const void *p, size_t n);
void brm_buf_puts(struct brm_buf *b, const char *s);
void brm_buf_printf(struct brm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends S as a JSON string literal, quotes included. */
void brm_buf_json_string(struct brm_buf *b, const char *s, size_t n);

/*
 * "8MB", "64KB", "512" (bytes; K, M, G are powers of 1024) -> bytes.
 * "90s", "15m", "24h", "2d", "250ms", "10" (seconds) -> seconds.
 * Return 0 on success, -1 when S is not of that form.
 */
int brm_parse_size(const char *s, uint64_t *out);
int brm_parse_duration(const char *s, double *out);

/*
 * A point in time as the command line takes it (--since, --until): a time
 * ago, "2h" or "2h ago" (a duration as above, before NOW); an ISO 8601 date
 * or time, "2026-11-21", "2026-11-21T10:00", "2026-11-21 10:00:00.5Z",
 * "2026-11-21T10:00+02:00" (UTC unless it names an offset); or seconds
 * since the epoch, "1763719200" (from 2001 on: a smaller bare number is
 * taken for a mistaken duration, a much larger one for milliseconds).
 * Returns 0 with seconds since the epoch in *OUT, or -1 with the reason in
 * ERR ("not a time", "there is no month 13 (months are 01 to 12)", ...).
 * BRM_TIME_FORMS says what is accepted, for the message around it.
 */
int brm_parse_time(const char *s, double now, double *out, struct brm_err *err);
#define BRM_TIME_FORMS                                                                             \
    "a time ago (90s, 30m, 2h, 7d), an ISO 8601 date or time (2026-11-21, 2026-11-21T10:00, "      \
    "UTC unless it ends in an offset such as +02:00), or seconds since the epoch (1763719200)"

/* A 64-bit digest of N bytes at P, the same on every machine: what the
 * journal knows a body's exact bytes by. Fast (8 bytes a step), not
 * cryptographic: whoever relies on it for equality compares the bytes
 * too. */
uint64_t brm_hash64(const void *p, size_t n);

void brm_hex_encode(const unsigned char *in, size_t n, char *out); /* writes 2n chars + NUL */
/* Decodes 2n hex digits of either case into N bytes; -1 on a non-hex digit. */
int brm_hex_decode(const char *in, size_t n, unsigned char *out);

size_t brm_base64_encoded_len(size_t n); /* without the NUL */
void brm_base64_encode(const unsigned char *in, size_t n, char *out);
/* Decodes standard base64 (padding optional, no whitespace); returns the
 * length written to OUT (which needs 3 * n / 4 + 3 bytes), or -1. */
long brm_base64_decode(const char *in, size_t n, unsigned char *out);

double brm_time_now(void);       /* wall clock, seconds since the epoch */
uint64_t brm_time_mono_ms(void); /* monotonic milliseconds */
uint64_t brm_time_mono_ns(void);
uint64_t brm_time_cpu_ns(void); /* CPU time of the calling thread */
/* Formats T (seconds since the epoch) as 2026-11-22T10:00:00.123Z. */
void brm_time_iso8601(double t, char *buf, size_t size);

/* DIR/REL, or a copy of REL when it is absolute or DIR is NULL. */
char *brm_path_join(const char *dir, const char *rel);
/* The folder part of PATH ("." when it has none). */
char *brm_path_dir(const char *path);
/* PATH shown relative to the working folder when it lies below it. */
char *brm_path_display(const char *path);

/* mkdir -p PATH with MODE; what exists already is fine, failures show at
 * the first use of the folder. */
void brm_mkdirs(const char *path, int mode);

/* Reads a whole file (at most MAX bytes) into OUT. Returns 0, or -1 with
 * errno set (EFBIG when larger than MAX). */
int brm_read_file(const char *path, size_t max, struct brm_buf *out);

/* Splits "host:port", "[v6]:port" or ":port" (any address). Returns 0, or
 * -1 when ADDR is not of that form. HOST gets "" for any address. */
int brm_split_addr(const char *addr, char *host, size_t hostlen, int *port);

/* 1 when ADDR ("host:port") binds to a loopback address only: a numeric
 * address in 127.0.0.0/8 or ::1 (or ::ffff:127.x.y.z), or "localhost" when
 * every address it resolves to is one. Any other name is not (0). */
int brm_addr_loopback(const char *addr);

/* Number of CPUs this process may run on. */
int brm_cpu_count(void);

/* Names the calling thread NAME (at most 15 bytes are kept): what top -H,
 * ps -L, perf and gdb show of it. */
void brm_thread_name(const char *name);

/* Writes " (did you mean 'NAME'?)" into HINT for the one of the N NAMES
 * closest to WORD (Levenshtein distance), or "" when none is within two
 * edits (and fewer edits than WORD has bytes): what `brume check` says of
 * a misspelt setting, option or key. */
void brm_suggest(const char *word, const char *const *names, size_t n, char *hint, size_t size);

#endif
