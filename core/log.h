/*
 * log: one record per line on stderr, as logfmt (default) or JSON. A record
 * is a message plus key/value string pairs; each record leaves in a single
 * write(2), so lines from worker threads never interleave. Never log a
 * secret or a whole body at info level. Depends on util.
 */
#ifndef BRM_LOG_H
#define BRM_LOG_H

#include <stddef.h>

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

#define brm_log_debug(...) brm_log(BRM_LOG_DEBUG, __VA_ARGS__, (char *)NULL)
#define brm_log_info(...)  brm_log(BRM_LOG_INFO, __VA_ARGS__, (char *)NULL)
#define brm_log_warn(...)  brm_log(BRM_LOG_WARN, __VA_ARGS__, (char *)NULL)
#define brm_log_error(...) brm_log(BRM_LOG_ERROR, __VA_ARGS__, (char *)NULL)

#endif
