#define _GNU_SOURCE
#include "pattern.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stddef.h>
#include <string.h>

#define ESC            '%'
#define SPECIALS       "^$*+?.([%-"
#define MAXCAPTURES    32
#define MAXDEPTH       200 /* nested matches, as Lua's MAXCCALLS for patterns */
#define CAP_UNFINISHED (-1)
#define CAP_POSITION   (-2)
#define CHARGE_EVERY   256 /* steps between two looks at the budget */
/* Bytes of a set, or of a back-reference compared, one step stands for;
 * and of a plain search (memmem reads far faster than the matcher steps). */
#define SET_BYTES_PER_STEP   16
#define PLAIN_BYTES_PER_STEP 64

/* What the functions share as their first upvalue. */
struct charger {
    brm_pattern_charge *charge;
};

struct state {
    const char *src_init, *src_end, *p_end;
    lua_State *L;
    brm_pattern_charge *charge;
    long steps;
    int depth; /* nested matches left */
    int level; /* captures in use */
    struct {
        const char *init;
        ptrdiff_t len; /* or CAP_UNFINISHED, CAP_POSITION */
    } cap[MAXCAPTURES];
};

static void step(struct state *ms) {
    if (++ms->steps >= CHARGE_EVERY) {
        ms->charge(ms->L, ms->steps);
        ms->steps = 0;
    }
}

/* Charges the steps not charged yet, at the end of a call. */
static void settle(struct state *ms) {
    if (ms->steps > 0) ms->charge(ms->L, ms->steps);
    ms->steps = 0;
}

static void prepare(struct state *ms, lua_State *L, const char *s, size_t ls, const char *p,
                    size_t lp) {
    ms->L = L;
    ms->src_init = s;
    ms->src_end = s + ls;
    ms->p_end = p + lp;
    ms->charge = ((struct charger *)lua_touserdata(L, lua_upvalueindex(1)))->charge;
    ms->steps = 0;
}

static void restart(struct state *ms) {
    ms->level = 0;
    ms->depth = MAXDEPTH;
}

/* ---- single characters -------------------------------------------------- */

/* Just past the character class starting at P (a char, %x or a [set]). */
static const char *class_end(struct state *ms, const char *p) {
    switch (*p++) {
    case ESC:
        if (p == ms->p_end) luaL_error(ms->L, "malformed pattern (ends with '%%')");
        return p + 1;
    case '[': {
        const char *set = p;
        if (*p == '^') p++;
        do { /* the first character is in the set even when it is ']' */
            if (p == ms->p_end) luaL_error(ms->L, "malformed pattern (missing ']')");
            if (*(p++) == ESC && p < ms->p_end) p++;
        } while (*p != ']');
        ms->steps += (p - set) / SET_BYTES_PER_STEP; /* a long set is read at every visit */
        return p + 1;
    }
    default: return p;
    }
}

static int match_class(int c, int cl) {
    int res;
    switch (tolower(cl)) {
    case 'a': res = isalpha(c); break;
    case 'c': res = iscntrl(c); break;
    case 'd': res = isdigit(c); break;
    case 'g': res = isgraph(c); break;
    case 'l': res = islower(c); break;
    case 'p': res = ispunct(c); break;
    case 's': res = isspace(c); break;
    case 'u': res = isupper(c); break;
    case 'w': res = isalnum(c); break;
    case 'x': res = isxdigit(c); break;
    case 'z': res = (c == 0); break; /* NUL; deprecated in Lua, still there */
    default: return cl == c;
    }
    return isupper(cl) ? !res : res != 0;
}

/* Does C belong to the set [ ... ] from P (at '[') to EC (at ']')? */
static int match_set(int c, const char *p, const char *ec) {
    int yes = 1;
    if (*(p + 1) == '^') {
        yes = 0;
        p++;
    }
    while (++p < ec) {
        if (*p == ESC) {
            p++;
            if (match_class(c, (unsigned char)*p)) return yes;
        } else if (*(p + 1) == '-' && p + 2 < ec) {
            p += 2;
            if ((unsigned char)*(p - 2) <= c && c <= (unsigned char)*p) return yes;
        } else if ((unsigned char)*p == c) {
            return yes;
        }
    }
    return !yes;
}

static int single_match(struct state *ms, const char *s, const char *p, const char *ep) {
    if (s >= ms->src_end) return 0;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.': return 1;
    case ESC: return match_class(c, (unsigned char)*(p + 1));
    case '[':
        ms->steps += (ep - p) / SET_BYTES_PER_STEP; /* each character is looked for in the set */
        return match_set(c, p, ep - 1);
    default: return (unsigned char)*p == c;
    }
}

/* ---- matching ----------------------------------------------------------- */

static const char *do_match(struct state *ms, const char *s, const char *p);

/* %bxy: a balanced run from x to y. */
static const char *match_balance(struct state *ms, const char *s, const char *p) {
    if (p >= ms->p_end - 1) luaL_error(ms->L, "malformed pattern (missing arguments to '%%b')");
    if (*s != *p) return NULL; /* at src_end this reads the string's NUL */
    int open = *p, close = *(p + 1), depth = 1;
    while (++s < ms->src_end) {
        step(ms);
        if (*s == close) {
            if (--depth == 0) return s + 1;
        } else if (*s == open) {
            depth++;
        }
    }
    return NULL;
}

/* The longest run of P's class that lets the rest match, then shorter ones. */
static const char *max_expand(struct state *ms, const char *s, const char *p, const char *ep) {
    ptrdiff_t i = 0;
    while (single_match(ms, s + i, p, ep)) {
        i++;
        step(ms);
    }
    for (; i >= 0; i--) {
        step(ms);
        const char *res = do_match(ms, s + i, ep + 1);
        if (res) return res;
    }
    return NULL;
}

/* The shortest run that lets the rest match. */
static const char *min_expand(struct state *ms, const char *s, const char *p, const char *ep) {
    for (;;) {
        step(ms);
        const char *res = do_match(ms, s, ep + 1);
        if (res) return res;
        if (!single_match(ms, s, p, ep)) return NULL;
        s++;
    }
}

static const char *start_capture(struct state *ms, const char *s, const char *p, int what) {
    int level = ms->level;
    if (level >= MAXCAPTURES) luaL_error(ms->L, "too many captures");
    ms->cap[level].init = s;
    ms->cap[level].len = what;
    ms->level = level + 1;
    const char *res = do_match(ms, s, p);
    if (!res) ms->level--;
    return res;
}

static const char *end_capture(struct state *ms, const char *s, const char *p) {
    int l = ms->level - 1;
    while (l >= 0 && ms->cap[l].len != CAP_UNFINISHED) l--;
    if (l < 0) luaL_error(ms->L, "invalid pattern capture");
    ms->cap[l].len = s - ms->cap[l].init;
    const char *res = do_match(ms, s, p);
    if (!res) ms->cap[l].len = CAP_UNFINISHED;
    return res;
}

/* %1 .. %9: the text a closed capture matched, again. */
static const char *match_capture(struct state *ms, const char *s, int l) {
    l -= '1';
    if (l < 0 || l >= ms->level || ms->cap[l].len == CAP_UNFINISHED)
        luaL_error(ms->L, "invalid capture index %%%d", l + 1);
    size_t len = (size_t)ms->cap[l].len;
    ms->steps += (long)(len / SET_BYTES_PER_STEP);
    if ((size_t)(ms->src_end - s) >= len && memcmp(ms->cap[l].init, s, len) == 0) return s + len;
    return NULL;
}

/* Where the pattern from P matches S up to, or NULL. */
static const char *do_match(struct state *ms, const char *s, const char *p) {
    if (ms->depth-- == 0) luaL_error(ms->L, "pattern too complex");
again:
    step(ms);
    if (p == ms->p_end) goto done;
    switch (*p) {
    case '(':
        if (*(p + 1) == ')')
            s = start_capture(ms, s, p + 2, CAP_POSITION);
        else
            s = start_capture(ms, s, p + 1, CAP_UNFINISHED);
        goto done;
    case ')': s = end_capture(ms, s, p + 1); goto done;
    case '$':
        if (p + 1 != ms->p_end) break; /* a plain '$' */
        if (s != ms->src_end) s = NULL;
        goto done;
    case ESC:
        switch (*(p + 1)) {
        case 'b':
            s = match_balance(ms, s, p + 2);
            if (s) {
                p += 4;
                goto again;
            }
            goto done;
        case 'f': {
            p += 2;
            if (*p != '[') luaL_error(ms->L, "missing '[' after '%%f' in pattern");
            const char *ep = class_end(ms, p);
            int prev = s == ms->src_init ? '\0' : (unsigned char)*(s - 1);
            int cur = s < ms->src_end ? (unsigned char)*s : '\0';
            if (!match_set(prev, p, ep - 1) && match_set(cur, p, ep - 1)) {
                p = ep;
                goto again;
            }
            s = NULL;
            goto done;
        }
        default:
            if (!isdigit((unsigned char)*(p + 1))) break;
            s = match_capture(ms, s, (unsigned char)*(p + 1));
            if (s) {
                p += 2;
                goto again;
            }
            goto done;
        }
        break;
    default: break;
    }
    /* A single character class, maybe followed by a repetition. */
    const char *ep = class_end(ms, p);
    if (!single_match(ms, s, p, ep)) {
        if (*ep == '*' || *ep == '?' || *ep == '-') { /* may match nothing */
            p = ep + 1;
            goto again;
        }
        s = NULL;
        goto done;
    }
    switch (*ep) {
    case '?': {
        const char *res = do_match(ms, s + 1, ep + 1);
        if (res) {
            s = res;
            goto done;
        }
        p = ep + 1;
        goto again;
    }
    case '+': s = max_expand(ms, s + 1, p, ep); goto done;
    case '*': s = max_expand(ms, s, p, ep); goto done;
    case '-': s = min_expand(ms, s, p, ep); goto done;
    default:
        s++;
        p = ep;
        goto again;
    }
done:
    ms->depth++;
    return s;
}

/* ---- captures ----------------------------------------------------------- */

/* Capture I of a match from S to E: its length, its text in *CAP; or
 * CAP_POSITION with the position pushed. The whole match when there are no
 * captures and I is 0. */
static ptrdiff_t get_capture(struct state *ms, int i, const char *s, const char *e,
                             const char **cap) {
    if (i >= ms->level) {
        if (i != 0) luaL_error(ms->L, "invalid capture index %%%d", i + 1);
        *cap = s;
        return e - s;
    }
    ptrdiff_t len = ms->cap[i].len;
    *cap = ms->cap[i].init;
    if (len == CAP_UNFINISHED) luaL_error(ms->L, "unfinished capture");
    if (len == CAP_POSITION) lua_pushinteger(ms->L, (ms->cap[i].init - ms->src_init) + 1);
    return len;
}

static void push_capture(struct state *ms, int i, const char *s, const char *e) {
    const char *cap;
    ptrdiff_t len = get_capture(ms, i, s, e, &cap);
    if (len != CAP_POSITION) lua_pushlstring(ms->L, cap, (size_t)len);
}

/* Pushes every capture, or the whole match when there are none (and S is
 * given). Returns how many. */
static int push_captures(struct state *ms, const char *s, const char *e) {
    int n = (ms->level == 0 && s) ? 1 : ms->level;
    luaL_checkstack(ms->L, n, "too many captures");
    for (int i = 0; i < n; i++) push_capture(ms, i, s, e);
    return n;
}

/* ---- the functions ------------------------------------------------------ */

/* A 1-based position, negative from the end, into 0-based; may be len. */
static size_t start_at(lua_Integer pos, size_t len) {
    if (pos > 0) return (size_t)pos - 1;
    if (pos == 0 || pos < -(lua_Integer)len) return 0;
    return len + (size_t)pos;
}

static int no_specials(const char *p, size_t len) {
    size_t at = 0;
    do { /* strpbrk stops at NULs: look past each */
        if (strpbrk(p + at, SPECIALS)) return 0;
        at += strlen(p + at) + 1;
    } while (at <= len);
    return 1;
}

static int find_or_match(lua_State *L, int find) {
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_at(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || no_specials(p, lp))) {
        /* A plain search: linear (glibc's memmem is two-way), charged by
         * the bytes it may read, before it runs. */
        struct charger *c = lua_touserdata(L, lua_upvalueindex(1));
        c->charge(L, 1 + (long)((ls - init + lp) / PLAIN_BYTES_PER_STEP));
        const char *at = memmem(s + init, ls - init, p, lp);
        if (at) {
            lua_pushinteger(L, (lua_Integer)(at - s) + 1);
            lua_pushinteger(L, (lua_Integer)(at - s) + (lua_Integer)lp);
            return 2;
        }
        luaL_pushfail(L);
        return 1;
    }
    struct state ms;
    int anchor = *p == '^';
    if (anchor) p++, lp--;
    prepare(&ms, L, s, ls, p, lp);
    const char *s1 = s + init;
    do {
        restart(&ms);
        const char *e = do_match(&ms, s1, p);
        if (e) {
            settle(&ms);
            if (!find) return push_captures(&ms, s1, e);
            lua_pushinteger(L, (lua_Integer)(s1 - s) + 1);
            lua_pushinteger(L, (lua_Integer)(e - s));
            return push_captures(&ms, NULL, NULL) + 2;
        }
    } while (s1++ < ms.src_end && !anchor);
    settle(&ms);
    luaL_pushfail(L);
    return 1;
}

static int api_find(lua_State *L) {
    return find_or_match(L, 1);
}

static int api_match(lua_State *L) {
    return find_or_match(L, 0);
}

struct gmatch {
    const char *src, *p, *lastmatch;
    struct state ms;
};

static int gmatch_next(lua_State *L) {
    struct gmatch *gm = lua_touserdata(L, lua_upvalueindex(4));
    gm->ms.L = L;
    for (const char *src = gm->src; src <= gm->ms.src_end; src++) {
        restart(&gm->ms);
        const char *e = do_match(&gm->ms, src, gm->p);
        if (e && e != gm->lastmatch) {
            gm->src = gm->lastmatch = e;
            settle(&gm->ms);
            return push_captures(&gm->ms, src, e);
        }
    }
    settle(&gm->ms);
    return 0;
}

static int api_gmatch(lua_State *L) {
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_at(luaL_optinteger(L, 3, 1), ls);
    lua_settop(L, 2);
    struct gmatch *gm = lua_newuserdatauv(L, sizeof(*gm), 0);
    if (init > ls) init = ls + 1; /* past the end: no match at all */
    prepare(&gm->ms, L, s, ls, p, lp);
    gm->src = s + init;
    gm->p = p;
    gm->lastmatch = NULL;
    /* Upvalues: the charger, the subject and the pattern (kept alive), the state. */
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_pushcclosure(L, gmatch_next, 4);
    return 1;
}

/* A replacement string: %0 is the match, %1..%9 captures, %% a percent. */
static void add_string(struct state *ms, luaL_Buffer *b, const char *s, const char *e) {
    size_t l;
    const char *news = lua_tolstring(ms->L, 3, &l), *p;
    while ((p = memchr(news, ESC, l)) != NULL) {
        luaL_addlstring(b, news, (size_t)(p - news));
        p++;
        if (*p == ESC) {
            luaL_addchar(b, *p);
        } else if (*p == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (isdigit((unsigned char)*p)) {
            const char *cap;
            ptrdiff_t len = get_capture(ms, *p - '1', s, e, &cap);
            if (len == CAP_POSITION)
                luaL_addvalue(b);
            else
                luaL_addlstring(b, cap, (size_t)len);
        } else {
            luaL_error(ms->L, "invalid use of '%c' in replacement string", ESC);
        }
        l -= (size_t)(p + 1 - news);
        news = p + 1;
    }
    luaL_addlstring(b, news, l);
}

/* Adds the replacement of the match S..E; 0 when it is the match itself. */
static int add_value(struct state *ms, luaL_Buffer *b, const char *s, const char *e, int tr) {
    lua_State *L = ms->L;
    switch (tr) {
    case LUA_TFUNCTION: {
        lua_pushvalue(L, 3);
        int n = push_captures(ms, s, e);
        lua_call(L, n, 1);
        break;
    }
    case LUA_TTABLE:
        push_capture(ms, 0, s, e);
        lua_gettable(L, 3);
        break;
    default: add_string(ms, b, s, e); return 1;
    }
    if (!lua_toboolean(L, -1)) { /* nil or false: keep the original */
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return 0;
    }
    if (!lua_isstring(L, -1))
        return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return 1;
}

static int api_gsub(lua_State *L) {
    size_t srcl, lp;
    const char *src = luaL_checklstring(L, 1, &srcl);
    const char *p = luaL_checklstring(L, 2, &lp);
    const char *lastmatch = NULL;
    int tr = lua_type(L, 3);
    lua_Integer max_s = luaL_optinteger(L, 4, (lua_Integer)srcl + 1);
    int anchor = *p == '^', changed = 0;
    lua_Integer n = 0;
    struct state ms;
    luaL_Buffer b;
    luaL_argexpected(
        L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
        "string/function/table");
    luaL_buffinit(L, &b);
    if (anchor) p++, lp--;
    prepare(&ms, L, src, srcl, p, lp);
    while (n < max_s) {
        restart(&ms);
        const char *e = do_match(&ms, src, p);
        if (e && e != lastmatch) {
            n++;
            changed = add_value(&ms, &b, src, e, tr) | changed;
            src = lastmatch = e;
        } else if (src < ms.src_end) {
            luaL_addchar(&b, *src++);
        } else {
            break;
        }
        if (anchor) break;
    }
    settle(&ms);
    if (!changed) {
        lua_pushvalue(L, 1);
    } else {
        luaL_addlstring(&b, src, (size_t)(ms.src_end - src));
        luaL_pushresult(&b);
    }
    lua_pushinteger(L, n);
    return 2;
}

static const luaL_Reg funcs[] = {
    { "find", api_find }, { "match", api_match }, { "gmatch", api_gmatch },
    { "gsub", api_gsub }, { NULL, NULL },
};

void brm_pattern_open(lua_State *L, int idx, brm_pattern_charge *charge) {
    idx = lua_absindex(L, idx);
    struct charger *c = lua_newuserdatauv(L, sizeof(*c), 0);
    c->charge = charge;
    lua_pushvalue(L, idx);
    lua_insert(L, -2);
    luaL_setfuncs(L, funcs, 1); /* each gets the charger as upvalue 1 */
    lua_pop(L, 1);
}
