/*
 * log: one record per line on stderr, as logfmt (default) or JSON. A record
 * is a message plus key/value string pairs; each record leaves in a single
 * write(2), so lines from worker threads never interleave. Keys are escaped
 * as values are, so no text can start a record of its own. Records made of
 * user text (a rule's brume.log and print) are capped in size, and a token
 * bucket caps how many one source may write. Never log a secret or a whole
 * body at info level. Depends on util.
 */
#ifndef BRM_LOG_H
#define BRM_LOG_H

#include <stddef.h>
#include <stdint.h>

enum brm_log_level { BRM_LOG_DEBUG, BRM_LOG_INFO, BRM_LOG_WARN, BRM_LOG_ERROR };
enum brm_log_format { BRM_LOG_LOGFMT, BRM_LOG_JSON };

void brm_log_setup(enum brm_log_level level, enum brm_log_format format);
int brm_log_enabled(enum brm_log_level level);
/* "debug", "info", ... -> level; -1 when unknown. */
int brm_log_level_parse(const char *name);

/* Logs MSG with the NULL-terminated key, value, key, value... strings that
 * follow; a NULL value is left out. */
void brm_log(enum brm_log_level level, const char *msg, ...) __attribute__((sentinel));
/* The same with the pairs in an array: KV holds 2 * NKV strings. */
void brm_log_kv(enum brm_log_level level, const char *msg, const char *const *kv, size_t nkv);

/* How much of its own text a user's record may hold: message, keys and
 * values together. What is past it is cut; a cut string ends in "...",
 * and the record gets a field truncated=N, the bytes left out. */
#define BRM_LOG_USER_MAX 4096

struct brm_log_field {
    const char *key, *value; /* any bytes, NULs included */
    size_t klen, vlen;
};

/*
 * Logs a record of user text: MSG (MSGLEN bytes; OMITTED more bytes of it
 * were not even passed) and FIELDS, cut to BRM_LOG_USER_MAX bytes together,
 * after the NFIXED pairs of FIXED (key, value, ... strings of brume's own:
 * rule, event; not cut). A user key that is one of the record's own (ts,
 * level, msg, a fixed key, truncated) is written as "field.KEY".
 */
void brm_log_user(enum brm_log_level level, const char *msg, size_t msglen, size_t omitted,
                  const char *const *fixed, size_t nfixed, const struct brm_log_field *fields,
                  size_t nfields);

/* A token bucket for one source of records: BRM_LOG_RATE tokens a second,
 * BRM_LOG_BURST at most; a record takes one, and one more per KB of text
 * it holds (brm_log_limit_spend): 100 short records a second, or 20 of
 * 4 KB. And what it dropped, by window. Zero it to start. */
#define BRM_LOG_RATE      100
#define BRM_LOG_BURST     200
#define BRM_LOG_WINDOW_MS 10000
struct brm_log_limit {
    double tokens;
    uint64_t last_ms;   /* when the bucket was last filled; 0: never */
    uint64_t window_ms; /* start of the current window */
    uint64_t dropped;   /* records dropped in it */
};

/* Whether the source of LIM may log a record at NOW_MS (monotonic); when
 * not, the record counts as dropped. *REPORT is set to the records dropped
 * in the window that ended before this call, once, and 0 otherwise: the
 * caller logs that count in one line. */
int brm_log_limit_admit(struct brm_log_limit *lim, uint64_t now_ms, uint64_t *report);
/* Takes the tokens for the BYTES of text an admitted record holds (the
 * bucket may go below zero: the next records wait). */
void brm_log_limit_spend(struct brm_log_limit *lim, size_t bytes);

#define brm_log_debug(...) brm_log(BRM_LOG_DEBUG, __VA_ARGS__, (char *)NULL)
#define brm_log_info(...)  brm_log(BRM_LOG_INFO, __VA_ARGS__, (char *)NULL)
#define brm_log_warn(...)  brm_log(BRM_LOG_WARN, __VA_ARGS__, (char *)NULL)
#define brm_log_error(...) brm_log(BRM_LOG_ERROR, __VA_ARGS__, (char *)NULL)

#endif
