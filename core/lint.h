/*
 * lint: reads the text of a rule file for what loading it cannot tell:
 * where a key of the table it returns is written (Lua tables do not keep
 * lines), the target names it passes to brume.send as literals, and where
 * it calls a function of the brume library. A
 * small lexer over Lua's tokens: comments, strings and long brackets are
 * skipped, so a name inside one does not count. Pure: no Lua state, no
 * I/O. Depends on util.
 */
#ifndef BRM_LINT_H
#define BRM_LINT_H

#include <stddef.h>

/* The line of the first `KEY =` or `["KEY"] =` in TEXT (LEN bytes), or 0
 * when there is none. */
int brm_lint_key_line(const char *text, size_t len, const char *key);

/* Called for each brume.send("NAME", ...) in the text: NAME (LEN bytes,
 * not NUL-terminated) and its line. */
typedef void brm_lint_send_fn(void *arg, const char *name, size_t len, int line);

/* Calls FN for every brume.send whose first argument is a string literal
 * (without escapes) followed by ',' or ')'. */
void brm_lint_sends(const char *text, size_t len, brm_lint_send_fn *fn, void *arg);

/* The line of the first call brume.MODULE.FN( in TEXT, or 0. */
int brm_lint_call_line(const char *text, size_t len, const char *module, const char *fn);

#endif
