#include "lint.h"

#include <string.h>

enum kind { T_END, T_NAME, T_STRING, T_OTHER };

struct token {
    enum kind kind;
    const char *s; /* a name, a string's content (quotes left out) or punctuation */
    size_t len;
    int line;
    int plain; /* a string without escapes: its content is its value */
};

struct lexer {
    const char *p, *end;
    int line;
};

static int is_name_start(char c) {
    return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

static int is_name_char(char c) {
    return is_name_start(c) || is_digit(c);
}

/* 1 when P is the sign of a number's exponent (1e-3, 0x1p+4). */
static int is_exponent_sign(const char *p) {
    return (*p == '-' || *p == '+') &&
           (p[-1] == 'e' || p[-1] == 'E' || p[-1] == 'p' || p[-1] == 'P');
}

/* The level of the long bracket opening at P ("[==[" is 2), or -1. */
static int long_open(const char *p, const char *end) {
    if (p >= end || *p != '[') return -1;
    const char *q = p + 1;
    while (q < end && *q == '=') q++;
    return q < end && *q == '[' ? (int)(q - p - 1) : -1;
}

/* Skips a long bracket of LEVEL whose opening starts at lx->p; its
 * content goes to T. An unclosed one runs to the end (loading the file
 * reports it). */
static void skip_long(struct lexer *lx, int level, struct token *t) {
    const char *p = lx->p + level + 2, *end = lx->end;
    if (p < end && *p == '\r') p++; /* a newline right after the opening is not content */
    if (p < end && *p == '\n') p++, lx->line++;
    t->s = p;
    for (; p < end; p++) {
        if (*p == '\n') lx->line++;
        if (*p != ']') continue;
        const char *q = p + 1;
        while (q < end && *q == '=') q++;
        if (q < end && *q == ']' && q - p - 1 == level) {
            t->len = (size_t)(p - t->s);
            lx->p = q + 1;
            return;
        }
    }
    t->len = (size_t)(end - t->s);
    lx->p = end;
}

/* Skips a short string opened by the quote at lx->p. */
static void skip_short(struct lexer *lx, struct token *t) {
    const char *p = lx->p + 1, *end = lx->end;
    char quote = lx->p[0];
    t->s = p;
    t->plain = 1;
    while (p < end && *p != quote && *p != '\n') {
        if (*p == '\\' && p + 1 < end) {
            t->plain = 0;
            if (p[1] == '\n') lx->line++;
            p++;
        }
        p++;
    }
    t->len = (size_t)(p - t->s);
    lx->p = p < end && *p == quote ? p + 1 : p;
}

/* Skips spaces, newlines and comments. */
static void skip_blank(struct lexer *lx) {
    struct token ignored;
    while (lx->p < lx->end) {
        const char *p = lx->p;
        if (*p == '\n') {
            lx->line++;
            lx->p++;
        } else if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\f' || *p == '\v') {
            lx->p++;
        } else if (*p == '-' && p + 1 < lx->end && p[1] == '-') {
            int level = long_open(p + 2, lx->end);
            lx->p = p + 2;
            if (level >= 0) {
                skip_long(lx, level, &ignored);
            } else {
                while (lx->p < lx->end && *lx->p != '\n') lx->p++;
            }
        } else {
            return;
        }
    }
}

static void next(struct lexer *lx, struct token *t) {
    static const char *const multi[] = {
        "...", "==", "~=", "<=", ">=", "..", "::", "<<", ">>", "//"
    };
    skip_blank(lx);
    memset(t, 0, sizeof(*t));
    t->line = lx->line;
    const char *p = lx->p, *end = lx->end;
    if (p >= end) return;
    int level;
    if (is_name_start(*p)) {
        t->kind = T_NAME;
        t->s = p;
        while (p < end && is_name_char(*p)) p++;
        t->len = (size_t)(p - t->s);
        lx->p = p;
    } else if (is_digit(*p) || (*p == '.' && p + 1 < end && is_digit(p[1]))) {
        t->kind = T_OTHER; /* a number: 3, 0x1F, 1.5e-3 */
        t->s = p;
        for (p++; p < end && (is_name_char(*p) || *p == '.' || is_exponent_sign(p)); p++) {
        }
        t->len = (size_t)(p - t->s);
        lx->p = p;
    } else if (*p == '"' || *p == '\'') {
        t->kind = T_STRING;
        skip_short(lx, t);
    } else if ((level = long_open(p, end)) >= 0) {
        t->kind = T_STRING;
        t->plain = 1;
        skip_long(lx, level, t);
    } else {
        t->kind = T_OTHER;
        t->s = p;
        t->len = 1;
        for (size_t i = 0; i < sizeof(multi) / sizeof(multi[0]); i++) {
            size_t n = strlen(multi[i]);
            if ((size_t)(end - p) >= n && memcmp(p, multi[i], n) == 0) {
                t->len = n;
                break;
            }
        }
        lx->p = p + t->len;
    }
}

static int is(const struct token *t, enum kind kind, const char *s) {
    return t->kind == kind && t->len == strlen(s) && memcmp(t->s, s, t->len) == 0;
}

/* The tokens of TEXT, the newest last in a window of WINDOW. */
#define WINDOW 6

struct scan {
    struct lexer lx;
    struct token w[WINDOW]; /* w[WINDOW - 1] is the newest */
};

static void scan_init(struct scan *s, const char *text, size_t len) {
    memset(s, 0, sizeof(*s));
    s->lx = (struct lexer){ text, text + len, 1 };
}

/* Moves the window on by one token; 0 at the end. */
static int scan_next(struct scan *s) {
    memmove(&s->w[0], &s->w[1], (WINDOW - 1) * sizeof(s->w[0]));
    next(&s->lx, &s->w[WINDOW - 1]);
    return s->w[WINDOW - 1].kind != T_END;
}

/* The token K places before the newest (0: the newest). */
static const struct token *back(const struct scan *s, int k) {
    return &s->w[WINDOW - 1 - k];
}

int brm_lint_key_line(const char *text, size_t len, const char *key) {
    struct scan s;
    scan_init(&s, text, len);
    while (scan_next(&s)) {
        if (!is(back(&s, 0), T_OTHER, "=")) continue;
        const struct token *name = back(&s, 1), *before = back(&s, 2);
        /* key = ..., not local key = ... nor t.key = ... */
        if (is(name, T_NAME, key) && !is(before, T_NAME, "local") && !is(before, T_OTHER, ".") &&
            !is(before, T_OTHER, ":"))
            return name->line;
        /* ["key"] = ... */
        if (is(name, T_OTHER, "]") && before->kind == T_STRING && before->plain &&
            before->len == strlen(key) && memcmp(before->s, key, before->len) == 0 &&
            is(back(&s, 3), T_OTHER, "["))
            return before->line;
    }
    return 0;
}

void brm_lint_sends(const char *text, size_t len, brm_lint_send_fn *fn, void *arg) {
    struct scan s;
    scan_init(&s, text, len);
    while (scan_next(&s)) {
        const struct token *end = back(&s, 0), *name = back(&s, 1);
        if ((is(end, T_OTHER, ",") || is(end, T_OTHER, ")")) && name->kind == T_STRING &&
            name->plain && is(back(&s, 2), T_OTHER, "(") && is(back(&s, 3), T_NAME, "send") &&
            is(back(&s, 4), T_OTHER, ".") && is(back(&s, 5), T_NAME, "brume"))
            fn(arg, name->s, name->len, name->line);
    }
}

int brm_lint_call_line(const char *text, size_t len, const char *module, const char *fn) {
    struct scan s;
    scan_init(&s, text, len);
    while (scan_next(&s)) {
        const struct token *open = back(&s, 0);
        if (is(open, T_OTHER, "(") && is(back(&s, 1), T_NAME, fn) &&
            is(back(&s, 2), T_OTHER, ".") && is(back(&s, 3), T_NAME, module) &&
            is(back(&s, 4), T_OTHER, ".") && is(back(&s, 5), T_NAME, "brume"))
            return open->line;
    }
    return 0;
}
