#include "plan.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static const char *const step_names[] = { "request", "lookup", "create", "update" };

const char *brm_step_name(enum brm_step s) {
    return s < BRM_NSTEPS ? step_names[s] : "?";
}

static char *opt_string(lua_State *L, int t, const char *k, size_t *len) {
    size_t n = 0;
    lua_getfield(L, t, k);
    const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    char *copy = v ? brm_xstrndup(v, n) : NULL;
    lua_pop(L, 1);
    if (len) *len = n;
    return copy;
}

static void request_reset(struct brm_request *r) {
    free(r->method);
    free(r->url);
    free(r->body);
    free(r->ref);
    for (size_t i = 0; i < r->nheaders; i++) free(r->headers[i]);
    free(r->headers);
    memset(r, 0, sizeof(*r));
}

void brm_plan_reset(struct brm_plan *p) {
    for (int s = 0; s < BRM_NSTEPS; s++) request_reset(&p->req[s]);
    memset(p, 0, sizeof(*p));
}

/* Reads the request table at IDX into R. [-0, +0] */
static void read_request(lua_State *L, int idx, struct brm_request *r) {
    r->present = 1;
    r->method = opt_string(L, idx, "method", NULL);
    r->url = opt_string(L, idx, "url", NULL);
    r->ref = opt_string(L, idx, "ref", NULL);
    r->body = opt_string(L, idx, "body", &r->body_len);
    lua_getfield(L, idx, "sign");
    r->sign = lua_type(L, -1) == LUA_TSTRING;
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "headers") == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
                r->headers = brm_xrealloc(r->headers, (r->nheaders + 1) * sizeof(char *));
                r->headers[r->nheaders++] =
                    brm_xasprintf("%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

void brm_plan_plain(struct brm_plan *p, const char *method, const char *url, const char *headers,
                    const char *body, size_t body_len, int sign) {
    struct brm_request *r = &p->req[BRM_STEP_PLAIN];
    memset(p, 0, sizeof(*p));
    r->present = 1;
    r->method = brm_xstrdup(method);
    r->url = brm_xstrdup(url);
    r->body = body ? brm_xstrndup(body, body_len) : NULL;
    r->body_len = body ? body_len : 0;
    r->sign = sign;
    for (const char *h = headers; h && *h;) {
        size_t n = strcspn(h, "\n");
        r->headers = brm_xrealloc(r->headers, (r->nheaders + 1) * sizeof(char *));
        r->headers[r->nheaders++] = brm_xstrndup(h, n);
        h += n + (h[n] == '\n');
    }
}

int brm_plan_decode(lua_State *L, const char *json, size_t len, int ticket, struct brm_plan *p,
                    struct brm_err *err) {
    static const char *const steps[] = {
        [BRM_STEP_LOOKUP] = "lookup", [BRM_STEP_CREATE] = "create", [BRM_STEP_UPDATE] = "update"
    };
    const char *what = ticket ? "plan" : "request";
    struct brm_err jerr;
    int top = lua_gettop(L);
    memset(p, 0, sizeof(*p));
    p->ticket = ticket;
    if (brm_json_decode(L, json, len, &jerr) < 0) {
        brm_err_set(err, "the stored %s is not JSON: %s", what, jerr.msg);
        return -1;
    }
    if (lua_type(L, -1) != LUA_TTABLE) {
        lua_settop(L, top);
        brm_err_set(err, "the stored %s is not a JSON object", what);
        return -1;
    }
    int t = lua_gettop(L);
    if (ticket) {
        lua_getfield(L, t, "closes");
        p->closes = lua_toboolean(L, -1);
        lua_pop(L, 1);
        for (int s = BRM_STEP_LOOKUP; s < BRM_NSTEPS; s++) {
            if (lua_getfield(L, t, steps[s]) == LUA_TTABLE)
                read_request(L, lua_gettop(L), &p->req[s]);
            lua_pop(L, 1);
        }
    } else {
        read_request(L, t, &p->req[BRM_STEP_PLAIN]);
    }
    lua_settop(L, top);
    for (int s = 0; s < BRM_NSTEPS; s++) {
        if (p->req[s].present && (!p->req[s].method || !p->req[s].url)) {
            brm_plan_reset(p);
            if (ticket)
                brm_err_set(err, "the stored plan's %s has no method or url", steps[s]);
            else
                brm_err_set(err, "the stored request has no method or url");
            return -1;
        }
    }
    return 0;
}

enum brm_plan_next brm_plan_start(const struct brm_plan *p, int known, enum brm_step *step) {
    const struct brm_request *r = p->req;
    if (!p->ticket)
        *step = BRM_STEP_PLAIN;
    else if (known && r[BRM_STEP_UPDATE].present)
        *step = BRM_STEP_UPDATE;
    else if (!known && r[BRM_STEP_LOOKUP].present)
        *step = BRM_STEP_LOOKUP;
    else if (!known && r[BRM_STEP_CREATE].present)
        *step = BRM_STEP_CREATE;
    else
        return BRM_PLAN_DONE; /* e.g. a resolve with no ticket: nothing to do */
    return BRM_PLAN_SEND;
}

enum brm_plan_next brm_plan_after(const struct brm_plan *p, enum brm_step step, int known,
                                  enum brm_step *next) {
    if (step != BRM_STEP_LOOKUP) return BRM_PLAN_DONE;
    /* Found: update it (or nothing to add); not found: create it (or
     * nothing to resolve). */
    if (known && p->req[BRM_STEP_UPDATE].present)
        *next = BRM_STEP_UPDATE;
    else if (!known && p->req[BRM_STEP_CREATE].present)
        *next = BRM_STEP_CREATE;
    else
        return BRM_PLAN_DONE;
    return BRM_PLAN_SEND;
}

/* %-encodes S as a URL path segment. */
static void url_escape(const char *s, struct brm_buf *out) {
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            brm_buf_append(out, s, 1);
        } else {
            char e[3] = { '%', hex[c >> 4], hex[c & 15] };
            brm_buf_append(out, e, 3);
        }
    }
}

char *brm_plan_url(const struct brm_request *r, const char *ref) {
    if (!ref || !*ref) return brm_xstrdup(r->url);
    struct brm_buf b;
    brm_buf_init(&b);
    const char *s = r->url;
    for (const char *at; (at = strstr(s, "{ref}")); s = at + 5) {
        brm_buf_append(&b, s, (size_t)(at - s));
        url_escape(ref, &b);
    }
    brm_buf_puts(&b, s);
    return b.data;
}

/* 1 when the field FIELD of the table on top of the stack, a string or a
 * number (as its text), is one of the '|'-separated VALUES. */
static int field_in(lua_State *L, const char *field, const char *values) {
    size_t n, vlen = strlen(values);
    lua_getfield(L, -1, field);
    const char *v = lua_isstring(L, -1) ? lua_tolstring(L, -1, &n) : NULL;
    int in = 0;
    for (const char *p = values; v && p <= values + vlen && !in; p += strcspn(p, "|") + 1)
        in = strcspn(p, "|") == n && memcmp(p, v, n) == 0;
    lua_pop(L, 1);
    return in;
}

/* Replaces the array on top of the stack by its first element that passes
 * the test "field=a|b" or "field!=a|b" (nil when none does). */
static void pick_element(lua_State *L, const char *test) {
    char field[64];
    size_t n = strcspn(test, "!=");
    int negate = test[n] == '!';
    const char *values = test + n + (negate ? 2 : 1);
    snprintf(field, sizeof(field), "%.*s", (int)n, test);
    size_t len = lua_rawlen(L, -1);
    if (!test[n]) len = 0; /* "?field" alone: none passes (values would be past the end) */
    for (size_t i = 1; i <= len; i++) {
        if (lua_rawgeti(L, -1, (lua_Integer)i) == LUA_TTABLE &&
            field_in(L, field, values) != negate) {
            lua_remove(L, -2);
            return;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_pushnil(L);
}

int brm_plan_extract_ref(lua_State *L, const char *body, size_t len, const char *path, char *out,
                         size_t size) {
    struct brm_err err;
    int top = lua_gettop(L), found = 0;
    if (brm_json_decode(L, body, len, &err) < 0) return 0;
    char part[128];
    const char *p = path;
    while (*p && lua_type(L, -1) == LUA_TTABLE) {
        size_t n = strcspn(p, ".");
        snprintf(part, sizeof(part), "%.*s", (int)n, p);
        char *end;
        long idx = strtol(part, &end, 10);
        if (part[0] == '?') {
            pick_element(L, part + 1);
        } else {
            /* A position in an array, or else a key (digits too: "404"). */
            int pos = *part && !*end && idx >= 0 && idx < LONG_MAX;
            if (!pos || lua_rawgeti(L, -1, idx + 1) == LUA_TNIL) {
                if (pos) lua_pop(L, 1);
                lua_getfield(L, -1, part);
            }
            lua_remove(L, -2);
        }
        p += n + (p[n] == '.');
    }
    if (!*p && (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
        if (lua_isinteger(L, -1))
            snprintf(out, size, "%lld", (long long)lua_tointeger(L, -1));
        else
            snprintf(out, size, "%s", lua_tostring(L, -1));
        found = out[0] != '\0';
    }
    lua_settop(L, top);
    return found;
}
