/* plan: plain requests from their parts, plans decoded from the JSON the
 * ticket adapters really make (servicenow, jira, zendesk, run through an
 * engine) and from hand-written JSON, every path of start/after, "{ref}" in
 * URLs, and ids read out of answers by dotted paths with pickers. */
#include <stdlib.h>
#include <unistd.h>

#include <lauxlib.h>

#include "engine.h"
#include "intake.h"
#include "json.h"
#include "log.h"
#include "plan.h"
#include "test.h"

static lua_State *L; /* a VM that runs no user code, as the outbox's */

/* 1 when R has the header line LINE. */
static int has_header(const struct brm_request *r, const char *line) {
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcmp(r->headers[i], line) == 0) return 1;
    return 0;
}

static int decode(const char *json, int ticket, struct brm_plan *p, struct brm_err *err) {
    brm_err_clear(err);
    int rc = brm_plan_decode(L, json, strlen(json), ticket, p, err);
    CHECK_INT(lua_gettop(L), 0);
    return rc;
}

/* The id at PATH of ANSWER, or "" when there is none. */
static const char *extract(const char *answer, const char *path) {
    static char out[BRM_PLAN_MAX_REF];
    out[0] = '\0';
    int found = brm_plan_extract_ref(L, answer, strlen(answer), path, out, sizeof(out));
    CHECK_INT(lua_gettop(L), 0);
    CHECK_INT(found, out[0] != '\0');
    return found ? out : "";
}

/* ---- plain requests -------------------------------------------------------- */

static void check_plain(void) {
    struct brm_plan p;
    brm_plan_plain(&p, "POST", "https://hooks.example.com/x",
                   "Content-Type: application/json\n"
                   "X-Token: a: b\nX-Empty:",
                   "a\0b\0", 4, 1);
    struct brm_request *r = &p.req[BRM_STEP_PLAIN];
    CHECK(!p.ticket && !p.closes);
    CHECK(r->present);
    CHECK_STR(r->method, "POST");
    CHECK_STR(r->url, "https://hooks.example.com/x");
    CHECK_INT(r->nheaders, 3);
    if (r->nheaders == 3) {
        CHECK_STR(r->headers[0], "Content-Type: application/json");
        CHECK_STR(r->headers[1], "X-Token: a: b");
        CHECK_STR(r->headers[2], "X-Empty:");
    }
    CHECK_INT(r->body_len, 4);
    CHECK(r->body && memcmp(r->body, "a\0b\0", 5) == 0); /* and NUL-terminated past it */
    CHECK_INT(r->sign, 1);
    CHECK(r->ref == NULL);
    for (int s = BRM_STEP_LOOKUP; s < BRM_NSTEPS; s++) CHECK(!p.req[s].present);
    enum brm_step step = BRM_NSTEPS;
    CHECK_INT(brm_plan_start(&p, 0, &step), BRM_PLAN_SEND);
    CHECK_INT(step, BRM_STEP_PLAIN);
    CHECK_INT(brm_plan_start(&p, 1, &step), BRM_PLAN_SEND);
    CHECK_INT(step, BRM_STEP_PLAIN);
    CHECK_INT(brm_plan_after(&p, BRM_STEP_PLAIN, 0, &step), BRM_PLAN_DONE);
    char *url = brm_plan_url(r, "ignored");
    CHECK_STR(url, "https://hooks.example.com/x");
    free(url);
    brm_plan_reset(&p);
    CHECK(p.req[BRM_STEP_PLAIN].method == NULL && !p.req[BRM_STEP_PLAIN].present);

    /* A trailing line break ends the last header; no headers, no body. */
    brm_plan_plain(&p, "GET", "http://h/", "A: 1\n", NULL, 7, 0);
    CHECK_INT(r->nheaders, 1);
    if (r->nheaders) CHECK_STR(r->headers[0], "A: 1");
    CHECK(r->body == NULL);
    CHECK_INT(r->body_len, 0);
    CHECK_INT(r->sign, 0);
    brm_plan_reset(&p);
    brm_plan_plain(&p, "GET", "http://h/", NULL, "", 0, 0);
    CHECK_INT(r->nheaders, 0);
    CHECK(r->headers == NULL);
    CHECK_STR(r->body, "");
    brm_plan_reset(&p);
    brm_plan_plain(&p, "GET", "http://h/", "", NULL, 0, 0);
    CHECK_INT(r->nheaders, 0);
    brm_plan_reset(&p);
    brm_plan_reset(&p); /* twice is harmless */
}

/* ---- decoding ------------------------------------------------------------- */

/* Plain requests stored as JSON by an older brume: the adapter's table. */
static void check_decode_plain_json(void) {
    struct brm_plan p;
    struct brm_err err;
    CHECK_INT(decode("{\"method\":\"POST\",\"url\":\"https://hooks.slack.com/services/T/B/X\","
                     "\"headers\":{\"Content-Type\":\"application/json\",\"X-A\":\"1\"},"
                     "\"body\":\"{\\\"text\\\":\\\"hi\\\"}\",\"sign\":\"standard-webhooks\"}",
                     0, &p, &err),
              0);
    struct brm_request *r = &p.req[BRM_STEP_PLAIN];
    CHECK(!p.ticket && r->present);
    CHECK_STR(r->method, "POST");
    CHECK_STR(r->url, "https://hooks.slack.com/services/T/B/X");
    CHECK_INT(r->nheaders, 2);
    CHECK(has_header(r, "Content-Type: application/json"));
    CHECK(has_header(r, "X-A: 1"));
    CHECK_STR(r->body, "{\"text\":\"hi\"}");
    CHECK_INT(r->body_len, 13);
    CHECK_INT(r->sign, 1);
    for (int s = BRM_STEP_LOOKUP; s < BRM_NSTEPS; s++) CHECK(!p.req[s].present);
    brm_plan_reset(&p);

    /* A body holding NUL bytes keeps them; no headers, no body, no sign;
     * header values that are not strings, and a sign that is not one, are
     * not taken. */
    CHECK_INT(
        decode("{\"method\":\"PUT\",\"url\":\"http://h/\",\"body\":\"a\\u0000b\"}", 0, &p, &err),
        0);
    CHECK_INT(r->body_len, 3);
    CHECK(r->body && memcmp(r->body, "a\0b", 4) == 0);
    CHECK_INT(r->nheaders, 0);
    CHECK_INT(r->sign, 0);
    brm_plan_reset(&p);
    CHECK_INT(decode("{\"method\":\"GET\",\"url\":\"http://h/\",\"sign\":true,"
                     "\"headers\":{\"N\":5,\"S\":\"s\",\"T\":{}}}",
                     0, &p, &err),
              0);
    CHECK(r->body == NULL && r->body_len == 0);
    CHECK_INT(r->sign, 0);
    CHECK_INT(r->nheaders, 1);
    CHECK(has_header(r, "S: s"));
    brm_plan_reset(&p);
    /* The same JSON read as a ticket plan has no steps: nothing to do. */
    CHECK_INT(decode("{\"method\":\"GET\",\"url\":\"http://h/\"}", 1, &p, &err), 0);
    enum brm_step step;
    CHECK(p.ticket && !p.req[BRM_STEP_PLAIN].present);
    CHECK_INT(brm_plan_start(&p, 0, &step), BRM_PLAN_DONE);
    CHECK_INT(brm_plan_start(&p, 1, &step), BRM_PLAN_DONE);
    brm_plan_reset(&p);
}

static void check_decode_errors(void) {
    static const struct {
        const char *json;
        int ticket;
        const char *msg;
    } cases[] = {
        { "", 0, "the stored request is not JSON: " },
        { "{\"method\":\"GET\",", 0, "the stored request is not JSON: " },
        { "<html>", 1, "the stored plan is not JSON: " },
        { "\"GET http://h/\"", 0, "the stored request is not a JSON object" },
        { "null", 1, "the stored plan is not a JSON object" },
        { "[1,2]", 0, "the stored request has no method or url" },
        { "{}", 0, "the stored request has no method or url" },
        { "{\"url\":\"http://h/\"}", 0, "the stored request has no method or url" },
        { "{\"method\":\"GET\"}", 0, "the stored request has no method or url" },
        { "{\"method\":1,\"url\":\"http://h/\"}", 0, "the stored request has no method or url" },
        { "{\"lookup\":{\"method\":\"GET\"},\"create\":{\"method\":\"POST\",\"url\":\"u\"}}", 1,
          "the stored plan's lookup has no method or url" },
        { "{\"create\":{\"method\":\"POST\",\"url\":\"u\"},\"update\":{\"url\":\"u/{ref}\"}}", 1,
          "the stored plan's update has no method or url" },
        { "{\"create\":{}}", 1, "the stored plan's create has no method or url" },
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(cases); i++) {
        struct brm_plan p;
        struct brm_err err;
        CHECK_INT(decode(cases[i].json, cases[i].ticket, &p, &err), -1);
        const char *m = cases[i].msg;
        size_t n = strlen(m);
        if (m[n - 1] == ' ') { /* then the JSON reason */
            CHECK_HAS(err.msg, m);
            CHECK(strncmp(err.msg, m, n) == 0 && err.msg[n] != '\0');
        } else {
            CHECK_STR(err.msg, m);
        }
        for (int s = 0; s < BRM_NSTEPS; s++) {
            CHECK(!p.req[s].present);
            CHECK(p.req[s].method == NULL && p.req[s].url == NULL && p.req[s].headers == NULL);
        }
        brm_plan_reset(&p); /* a failed decode leaves nothing to free, and may be reset */
    }
    /* The JSON reason names the byte. */
    struct brm_plan p;
    struct brm_err err;
    CHECK_INT(decode("{\"method\" \"GET\"}", 0, &p, &err), -1);
    CHECK_HAS(err.msg, "byte");
}

/* ---- start and after ------------------------------------------------------- */

#define LOOKUP_JSON "\"lookup\":{\"method\":\"GET\",\"url\":\"http://h/find\",\"ref\":\"0.id\"}"
#define CREATE_JSON "\"create\":{\"method\":\"POST\",\"url\":\"http://h/new\",\"ref\":\"id\"}"
#define UPDATE_JSON "\"update\":{\"method\":\"PUT\",\"url\":\"http://h/{ref}\"}"

/* Step names for the table below; "-" is done. */
static const char *next_name(enum brm_plan_next n, enum brm_step s) {
    return n == BRM_PLAN_DONE ? "-" : brm_step_name(s);
}

static void check_start_after(void) {
    static const struct {
        const char *json;
        /* the first step, ticket unknown / known; the step after a lookup
         * that found no ticket / found one; after a create; after an update */
        const char *start_unknown, *start_known, *after_lookup_none, *after_lookup_found;
    } cases[] = {
        /* a trigger: look up, create when none, else add to it */
        { "{" LOOKUP_JSON "," CREATE_JSON "," UPDATE_JSON "}", "lookup", "update", "create",
          "update" },
        /* a resolve: nothing to resolve without a ticket */
        { "{" LOOKUP_JSON "," UPDATE_JSON ",\"closes\":true}", "lookup", "update", "-", "update" },
        /* no lookup: create straight away */
        { "{" CREATE_JSON "," UPDATE_JSON "}", "create", "update", "-", "-" },
        /* create only: a known ticket needs nothing more */
        { "{" CREATE_JSON "}", "create", "-", "-", "-" },
        { "{" LOOKUP_JSON "," CREATE_JSON "}", "lookup", "-", "create", "-" },
        /* update only: nothing without a ticket */
        { "{" UPDATE_JSON "}", "-", "update", "-", "-" },
        { "{" LOOKUP_JSON "}", "lookup", "-", "-", "-" },
        { "{}", "-", "-", "-", "-" },
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(cases); i++) {
        struct brm_plan p;
        struct brm_err err;
        enum brm_step s = BRM_NSTEPS;
        CHECK_INT(decode(cases[i].json, 1, &p, &err), 0);
        enum brm_plan_next n = brm_plan_start(&p, 0, &s);
        CHECK_STR(next_name(n, s), cases[i].start_unknown);
        n = brm_plan_start(&p, 1, &s);
        CHECK_STR(next_name(n, s), cases[i].start_known);
        if (p.req[BRM_STEP_LOOKUP].present) {
            n = brm_plan_after(&p, BRM_STEP_LOOKUP, 0, &s);
            CHECK_STR(next_name(n, s), cases[i].after_lookup_none);
            n = brm_plan_after(&p, BRM_STEP_LOOKUP, 1, &s);
            CHECK_STR(next_name(n, s), cases[i].after_lookup_found);
        }
        /* A create or an update is the last step, found or not. */
        for (int known = 0; known < 2; known++) {
            CHECK_INT(brm_plan_after(&p, BRM_STEP_CREATE, known, &s), BRM_PLAN_DONE);
            CHECK_INT(brm_plan_after(&p, BRM_STEP_UPDATE, known, &s), BRM_PLAN_DONE);
        }
        brm_plan_reset(&p);
    }
    struct brm_plan p;
    struct brm_err err;
    CHECK_INT(decode("{" LOOKUP_JSON ",\"closes\":true}", 1, &p, &err), 0);
    CHECK_INT(p.closes, 1);
    CHECK_STR(p.req[BRM_STEP_LOOKUP].ref, "0.id");
    brm_plan_reset(&p);
    CHECK_INT(decode("{" LOOKUP_JSON ",\"closes\":false}", 1, &p, &err), 0);
    CHECK_INT(p.closes, 0);
    brm_plan_reset(&p);
    CHECK_STR(brm_step_name(BRM_STEP_PLAIN), "request");
    CHECK_STR(brm_step_name(BRM_STEP_LOOKUP), "lookup");
    CHECK_STR(brm_step_name(BRM_STEP_CREATE), "create");
    CHECK_STR(brm_step_name(BRM_STEP_UPDATE), "update");
    CHECK_STR(brm_step_name(BRM_NSTEPS), "?");
}

/* ---- URLs ------------------------------------------------------------------- */

static void check_url_with(const char *url, const char *ref, const char *want) {
    struct brm_request r = { .present = 1, .url = (char *)url };
    char *got = brm_plan_url(&r, ref);
    CHECK_STR(got, want);
    CHECK(got != r.url);
    free(got);
}

static void check_url(void) {
    check_url_with("https://x/rest/api/3/issue/{ref}/comment", "OPS-7",
                   "https://x/rest/api/3/issue/OPS-7/comment");
    check_url_with("https://x/api/v2/tickets/{ref}.json", "35437",
                   "https://x/api/v2/tickets/35437.json");
    /* A ref is one path segment: anything else is %-encoded. */
    check_url_with("http://h/t/{ref}", "a b/c", "http://h/t/a%20b%2Fc");
    check_url_with("http://h/t/{ref}", "Az09-._~", "http://h/t/Az09-._~");
    check_url_with("http://h/t/{ref}", "?x=1&y#%+", "http://h/t/%3Fx%3D1%26y%23%25%2B");
    check_url_with("http://h/t/{ref}", "\xc3\xa9t\xc3\xa9 \xe2\x82\xac",
                   "http://h/t/%C3%A9t%C3%A9%20%E2%82%AC");
    check_url_with("http://h/t/{ref}", "..", "http://h/t/..");
    /* Every "{ref}" is replaced, and the one at the very end. */
    check_url_with("http://h/{ref}/notes?of={ref}", "7", "http://h/7/notes?of=7");
    check_url_with("{ref}", "a/b", "a%2Fb");
    /* No "{ref}", no ref: the URL as it is. */
    check_url_with("http://h/t/new", "7", "http://h/t/new");
    check_url_with("http://h/t/{re}f}", "7", "http://h/t/{re}f}");
    check_url_with("http://h/t/{ref}", "", "http://h/t/{ref}");
    check_url_with("http://h/t/{ref}", NULL, "http://h/t/{ref}");
}

/* ---- ids out of answers ----------------------------------------------------- */

static void check_extract(void) {
    /* nested objects; array positions from 0 */
    CHECK_STR(extract("{\"result\":{\"sys_id\":\"46d4\",\"number\":\"INC1\"}}", "result.sys_id"),
              "46d4");
    const char *list = "{\"result\":[{\"sys_id\":\"a0\"},{\"sys_id\":\"a1\"}]}";
    CHECK_STR(extract(list, "result.0.sys_id"), "a0");
    CHECK_STR(extract(list, "result.1.sys_id"), "a1");
    CHECK_STR(extract(list, "result.2.sys_id"), "");
    CHECK_STR(extract(list, "result.-1.sys_id"), "");
    CHECK_STR(extract(list, "result.99999999999999999999.sys_id"), "");
    CHECK_STR(extract("{\"result\":[]}", "result.0.sys_id"), "");
    CHECK_STR(extract("{\"a\":{\"b\":{\"c\":{\"d\":\"deep\"}}}}", "a.b.c.d"), "deep");
    CHECK_STR(extract("[[1,2],[3,\"x\"]]", "1.1"), "x");
    CHECK_STR(extract("[[1,2],[3,\"x\"]]", "0.0"), "1");
    /* a key made of digits, in an object */
    CHECK_STR(extract("{\"by_code\":{\"404\":\"nf\",\"0\":\"zero\"}}", "by_code.404"), "nf");
    CHECK_STR(extract("{\"by_code\":{\"0\":\"zero\"}}", "by_code.0"), "zero");
    /* numbers as ids: integers exactly, others as Lua prints them */
    CHECK_STR(extract("{\"ticket\":{\"id\":35436}}", "ticket.id"), "35436");
    CHECK_STR(extract("{\"id\":9007199254740993}", "id"), "9007199254740993");
    CHECK_STR(extract("{\"id\":-12}", "id"), "-12");
    CHECK_STR(extract("{\"id\":0}", "id"), "0");
    CHECK_STR(extract("{\"id\":1.5}", "id"), "1.5");
    /* no id: missing, empty, not a string or number, a path past a leaf */
    CHECK_STR(extract(list, "result.0.nope"), "");
    CHECK_STR(extract(list, "nope.0.sys_id"), "");
    CHECK_STR(extract(list, "result"), "");
    CHECK_STR(extract(list, "result.0"), "");
    CHECK_STR(extract("{\"id\":\"\"}", "id"), "");
    CHECK_STR(extract("{\"id\":true}", "id"), "");
    CHECK_STR(extract("{\"id\":null}", "id"), "");
    CHECK_STR(extract("{\"id\":\"abc\"}", "id.x"), "");
    CHECK_STR(extract("{\"id\":\"abc\"}", "id..x"), "");
    /* answers that are not JSON: a proxy's page, nothing, a cut answer */
    CHECK_STR(extract("<html><body>502 Bad Gateway</body></html>", "result.sys_id"), "");
    CHECK_STR(extract("", "id"), "");
    CHECK_STR(extract("{\"id\":\"abc\",\"more\":[1,2,", "id"), "");
    CHECK_STR(extract("{\"id\":\"abc\"} trailing", "id"), "");

    /* pickers: the first element whose field is (not) one of the values */
    const char *tickets = "{\"tickets\":[{\"id\":1,\"status\":\"closed\"},{\"id\":2,\"status\":"
                          "\"solved\"},{\"id\":3,\"status\":\"open\"},{\"id\":4,\"status\":"
                          "\"new\"}]}";
    CHECK_STR(extract(tickets, "tickets.?status!=solved|closed.id"), "3");
    CHECK_STR(extract(tickets, "tickets.?status=solved|closed.id"), "1");
    CHECK_STR(extract(tickets, "tickets.?status=new|solved.id"), "2");
    CHECK_STR(extract(tickets, "tickets.?status=new.id"), "4");
    CHECK_STR(extract(tickets, "tickets.?status!=closed.id"), "2");
    CHECK_STR(extract(tickets, "tickets.?status=pending.id"), "");
    CHECK_STR(extract(tickets, "tickets.?status!=closed|solved|open|new.id"), "");
    /* a value matches whole, not as a prefix or a part */
    CHECK_STR(extract(tickets, "tickets.?status=sol|lose.id"), "");
    CHECK_STR(extract(tickets, "tickets.?status=solvedx|xopen.id"), "");
    /* the picked element as the last part */
    CHECK_STR(extract("[\"a\",{\"s\":\"x\"}]", "?s=x"), "");
    /* an element without the field is not one of the values */
    const char *some = "{\"t\":[7,\"s\",{\"id\":5},{\"id\":6,\"status\":\"open\"}]}";
    CHECK_STR(extract(some, "t.?status!=solved.id"), "5");
    CHECK_STR(extract(some, "t.?status=open.id"), "6");
    /* numbers compare as their text */
    const char *prio = "{\"t\":[{\"id\":\"a\",\"p\":1},{\"id\":\"b\",\"p\":2}]}";
    CHECK_STR(extract(prio, "t.?p=2.id"), "b");
    CHECK_STR(extract(prio, "t.?p!=1.id"), "b");
    /* an empty value is the empty string */
    const char *empty = "{\"t\":[{\"id\":1,\"s\":\"x\"},{\"id\":2,\"s\":\"\"}]}";
    CHECK_STR(extract(empty, "t.?s=.id"), "2");
    CHECK_STR(extract(empty, "t.?s=y|.id"), "2");
    CHECK_STR(extract(empty, "t.?s!=.id"), "1");
    /* "?field" with no operator picks nothing, not even an empty field */
    CHECK_STR(extract(empty, "t.?s.id"), "");
    CHECK_STR(extract(tickets, "tickets.?status.id"), "");
    /* a picker on an object, or on a leaf */
    CHECK_STR(extract("{\"t\":{\"a\":{\"s\":\"x\",\"id\":1}}}", "t.?s=x.id"), "");
    CHECK_STR(extract("{\"t\":\"x\"}", "t.?s=x.id"), "");
    /* pickers nest, and mix with positions */
    CHECK_STR(extract("{\"g\":[{\"k\":\"a\",\"m\":[{\"r\":\"x\",\"id\":1},{\"r\":\"y\",\"id\":2}]},"
                      "{\"k\":\"b\",\"m\":[{\"r\":\"y\",\"id\":3}]}]}",
                      "g.?k=b.m.?r=y.id"),
              "3");
    CHECK_STR(
        extract("{\"g\":[{\"k\":\"a\",\"m\":[{\"r\":\"x\",\"id\":1},{\"r\":\"y\",\"id\":2}]}]}",
                "g.0.m.?r!=x.id"),
        "2");

    /* a value longer than the buffer is cut to it */
    char big[401];
    char json[700];
    memset(big, 'x', 400);
    big[400] = '\0';
    snprintf(json, sizeof(json), "{\"id\":\"%s\"}", big);
    const char *got = extract(json, "id");
    CHECK_INT(strlen(got), BRM_PLAN_MAX_REF - 1);
    CHECK(strspn(got, "x") == BRM_PLAN_MAX_REF - 1);
    char small[8] = "";
    CHECK_INT(brm_plan_extract_ref(L, json, strlen(json), "id", small, sizeof(small)), 1);
    CHECK_STR(small, "xxxxxxx");
    CHECK_INT(brm_plan_extract_ref(L, "{\"id\":123456789}", 16, "id", small, sizeof(small)), 1);
    CHECK_STR(small, "1234567");
    /* the answer's length is what counts, not a NUL */
    CHECK_INT(brm_plan_extract_ref(L, "{\"id\":\"a\"}xyz", 10, "id", small, sizeof(small)), 1);
    CHECK_INT(lua_gettop(L), 0);
}

/* ---- the plans the adapters make --------------------------------------------- */

static char dir[64];

static void write_file(const char *rel, const char *text) {
    char *path = brm_xasprintf("%s/%s", dir, rel);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    free(path);
}

/*
 * Walks P as the outbox does, each step answering 2xx with ANSWERS[step]:
 * REF is the ticket known at the start ("" none). Appends the requests made,
 * one "step METHOD url" a line, then "done" (", forgets the ticket" when an
 * update of a closing plan ended it) or why it stopped.
 */
static void walk(const struct brm_plan *p, const char *ref, const char *const answers[],
                 struct brm_buf *trace) {
    char id[BRM_PLAN_MAX_REF];
    enum brm_step s = BRM_NSTEPS, last = BRM_NSTEPS;
    snprintf(id, sizeof(id), "%s", ref);
    trace->len = 0;
    brm_buf_puts(trace, "");
    for (enum brm_plan_next n = brm_plan_start(p, id[0] != '\0', &s); n == BRM_PLAN_SEND;
         n = brm_plan_after(p, s, id[0] != '\0', &s)) {
        const struct brm_request *r = &p->req[s];
        char *url = brm_plan_url(r, id);
        brm_buf_printf(trace, "%s %s %s\n", brm_step_name(s), r->method, url);
        free(url);
        last = s;
        const char *a = answers[s] ? answers[s] : "";
        char got[BRM_PLAN_MAX_REF];
        if ((s == BRM_STEP_LOOKUP || s == BRM_STEP_CREATE) && r->ref) {
            if (brm_plan_extract_ref(L, a, strlen(a), r->ref, got, sizeof(got)))
                snprintf(id, sizeof(id), "%s", got);
            else if (s == BRM_STEP_CREATE) {
                brm_buf_printf(trace, "create: the answer has no %s\n", r->ref);
                return;
            }
        }
    }
    brm_buf_printf(trace, "done%s\n",
                   last == BRM_STEP_UPDATE && p->closes ? ", forgets the ticket" : "");
}

/* The action sent to TARGET with ACTION ("trigger" or "resolve"). */
static const struct brm_action *action_for(const struct brm_actions *a, const char *target,
                                           int nth) {
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i].target, target) == 0 && nth-- == 0) return &a->v[i];
    return NULL;
}

/* Decodes the plan of action X into P, checking it came as a ticket plan. */
static int plan_of(const struct brm_action *x, const char *ticket, struct brm_plan *p) {
    struct brm_err err;
    CHECK(x != NULL);
    if (!x) return -1;
    CHECK(x->plan != NULL && x->method == NULL && x->url == NULL);
    CHECK_STR(x->ticket, ticket);
    if (!x->plan) return -1;
    int rc = decode(x->plan, 1, p, &err);
    CHECK_INT(rc, 0);
    if (rc < 0) fprintf(stderr, "  %s\n", err.msg);
    return rc;
}

#define SN "https://acme.service-now.com/api/now/table/incident"

static void check_servicenow(const struct brm_actions *a, struct brm_buf *trace) {
    struct brm_plan p;
    /* '^' would end a term of the encoded query: it becomes '_' */
    if (plan_of(action_for(a, "sn", 0), "ap 1/\xc3\xa9_x", &p) == 0) {
        CHECK(p.ticket && !p.closes);
        CHECK(p.req[BRM_STEP_LOOKUP].present && p.req[BRM_STEP_CREATE].present &&
              p.req[BRM_STEP_UPDATE].present && !p.req[BRM_STEP_PLAIN].present);
        const struct brm_request *l = &p.req[BRM_STEP_LOOKUP], *c = &p.req[BRM_STEP_CREATE],
                                 *u = &p.req[BRM_STEP_UPDATE];
        CHECK_STR(l->ref, "result.0.sys_id");
        CHECK_STR(c->ref, "result.sys_id");
        CHECK(u->ref == NULL);
        CHECK(l->body == NULL);
        CHECK_INT(l->nheaders, 3);
        CHECK(has_header(l, "Authorization: Basic dTpw"));
        CHECK(has_header(c, "Content-Type: application/json"));
        CHECK(has_header(u, "Accept: application/json"));
        CHECK(!l->sign && !c->sign && !u->sign);
        CHECK_HAS(c->body, "\"correlation_id\":\"ap 1/\xc3\xa9_x\"");
        CHECK_HAS(c->body, "\"urgency\":\"1\"");
        CHECK_HAS(u->body, "\"work_notes\":\"AP down\\nap-1 lost power\"");
        /* none open: create one; then the next message adds a note */
        const char *none[BRM_NSTEPS] = { [BRM_STEP_LOOKUP] = "{\"result\":[]}",
                                         [BRM_STEP_CREATE] = "{\"result\":{\"sys_id\":\"46d44a5c\","
                                                             "\"number\":\"INC0010001\"}}" };
        walk(&p, "", none, trace);
        CHECK_STR(trace->data, "lookup GET " SN "?sysparm_query=correlation_id%3Dap%201%2F%C3%A9_"
                               "x%5Eactive%3Dtrue%5Estate%21%3D6&sysparm_fields=sys_id&"
                               "sysparm_limit=1\n"
                               "create POST " SN "\n"
                               "done\n");
        walk(&p, "46d44a5c", none, trace);
        CHECK_STR(trace->data, "update PATCH " SN "/46d44a5c\ndone\n");
        /* found (a retry after a lost answer): no second incident */
        const char *found[BRM_NSTEPS] = { [BRM_STEP_LOOKUP] =
                                              "{\"result\":[{\"sys_id\":\"9f\"}]}" };
        walk(&p, "", found, trace);
        CHECK_HAS(trace->data, "\nupdate PATCH " SN "/9f\ndone\n");
        /* a create answered without the id stops there */
        const char *odd[BRM_NSTEPS] = {
            [BRM_STEP_LOOKUP] = "{\"result\":[]}", [BRM_STEP_CREATE] = "{\"error\":\"?\"}"
        };
        walk(&p, "", odd, trace);
        CHECK_HAS(trace->data, "create POST " SN "\ncreate: the answer has no result.sys_id\n");
        brm_plan_reset(&p);
    }
    if (plan_of(action_for(a, "sn", 1), "ap 1/\xc3\xa9_x", &p) == 0) {
        CHECK(p.closes);
        CHECK(p.req[BRM_STEP_LOOKUP].present && !p.req[BRM_STEP_CREATE].present &&
              p.req[BRM_STEP_UPDATE].present);
        CHECK_HAS(p.req[BRM_STEP_UPDATE].body, "\"state\":\"6\"");
        CHECK_HAS(p.req[BRM_STEP_UPDATE].body, "\"close_code\":\"Solution provided\"");
        const char *none[BRM_NSTEPS] = { [BRM_STEP_LOOKUP] = "{\"result\":[]}" };
        walk(&p, "", none, trace);
        CHECK_HAS(trace->data, "sysparm_limit=1\ndone\n"); /* nothing to resolve */
        const char *found[BRM_NSTEPS] = { [BRM_STEP_LOOKUP] =
                                              "{\"result\":[{\"sys_id\":\"9f\"}]}" };
        walk(&p, "", found, trace);
        CHECK_HAS(trace->data, "\nupdate PATCH " SN "/9f\ndone, forgets the ticket\n");
        walk(&p, "46d44a5c", none, trace);
        CHECK_STR(trace->data, "update PATCH " SN "/46d44a5c\ndone, forgets the ticket\n");
        brm_plan_reset(&p);
    }
}

static void check_jira(const struct brm_actions *a, struct brm_buf *trace) {
    struct brm_plan p;
    const char *none[BRM_NSTEPS] = { [BRM_STEP_LOOKUP] = "{\"issues\":[],\"isLast\":true}",
                                     [BRM_STEP_CREATE] =
                                         "{\"id\":\"10000\",\"key\":\"OPS-24\",\"self\":\"https:"
                                         "//acme.atlassian.net/rest/api/3/issue/10000\"}" };
    const char *found[BRM_NSTEPS] = { [BRM_STEP_LOOKUP] =
                                          "{\"issues\":[{\"id\":\"10001\",\"key\":\"OPS-7\"}]}" };
    /* Jira Cloud: REST v3, the description in ADF */
    if (plan_of(action_for(a, "jira", 0), "ap 1/\xc3\xa9^x", &p) == 0) {
        CHECK(!p.closes);
        CHECK_STR(p.req[BRM_STEP_LOOKUP].ref, "issues.0.key");
        CHECK_STR(p.req[BRM_STEP_CREATE].ref, "key");
        CHECK_HAS(p.req[BRM_STEP_LOOKUP].url,
                  "https://acme.atlassian.net/rest/api/3/search/jql?jql=project%20%3D%20%22OPS%22"
                  "%20AND%20labels%20%3D%20%22brume-");
        CHECK_HAS(p.req[BRM_STEP_CREATE].body, "\"type\":\"doc\"");
        CHECK(has_header(&p.req[BRM_STEP_CREATE], "Authorization: Basic YUBiLmM6dG9r"));
        walk(&p, "", none, trace);
        CHECK_HAS(trace->data, "&fields=key&maxResults=1\n"
                               "create POST https://acme.atlassian.net/rest/api/3/issue\ndone\n");
        walk(&p, "", found, trace);
        CHECK_HAS(trace->data, "\nupdate POST https://acme.atlassian.net/rest/api/3/issue/OPS-7/"
                               "comment\ndone\n");
        brm_plan_reset(&p);
    }
    /* Data Center: REST v2, a token, a resolve transition */
    if (plan_of(action_for(a, "jdc", 1), "ap 1/\xc3\xa9^x", &p) == 0) {
        CHECK(p.closes && !p.req[BRM_STEP_CREATE].present);
        CHECK(has_header(&p.req[BRM_STEP_UPDATE], "Authorization: Bearer pat"));
        CHECK_HAS(p.req[BRM_STEP_UPDATE].body, "\"transition\":{\"id\":\"31\"}");
        walk(&p, "OPS-9", none, trace);
        CHECK_STR(trace->data, "update POST https://jira.acme.corp/rest/api/2/issue/OPS-9/"
                               "transitions\ndone, forgets the ticket\n");
        walk(&p, "", found, trace);
        CHECK_HAS(trace->data, "lookup GET https://jira.acme.corp/rest/api/2/search?jql=");
        CHECK_HAS(trace->data, "\nupdate POST https://jira.acme.corp/rest/api/2/issue/OPS-7/"
                               "transitions\ndone, forgets the ticket\n");
        brm_plan_reset(&p);
    }
}

static void check_zendesk(const struct brm_actions *a, struct brm_buf *trace) {
    struct brm_plan p;
    const char *lookup = "{\"tickets\":[{\"id\":35436,\"status\":\"solved\"},{\"id\":35437,"
                         "\"status\":\"open\"}],\"count\":2}";
    if (plan_of(action_for(a, "zd", 0), "ap 1/\xc3\xa9^x", &p) == 0) {
        CHECK_STR(p.req[BRM_STEP_LOOKUP].ref, "tickets.?status!=solved|closed.id");
        CHECK_STR(p.req[BRM_STEP_CREATE].ref, "ticket.id");
        CHECK_HAS(p.req[BRM_STEP_CREATE].body, "\"external_id\":\"ap 1/\xc3\xa9^x\"");
        /* only solved and closed ones: a new ticket */
        const char *closed[BRM_NSTEPS] = {
            [BRM_STEP_LOOKUP] = "{\"tickets\":[{\"id\":35436,\"status\":\"closed\"}]}",
            [BRM_STEP_CREATE] = "{\"ticket\":{\"id\":35438,\"status\":\"new\"}}"
        };
        walk(&p, "", closed, trace);
        CHECK_STR(trace->data, "lookup GET https://acme.zendesk.com/api/v2/tickets.json?"
                               "external_id=ap%201%2F%C3%A9%5Ex\n"
                               "create POST https://acme.zendesk.com/api/v2/tickets.json\n"
                               "done\n");
        const char *open[BRM_NSTEPS] = { [BRM_STEP_LOOKUP] = lookup };
        walk(&p, "", open, trace);
        CHECK_HAS(trace->data, "\nupdate PUT https://acme.zendesk.com/api/v2/tickets/35437.json\n"
                               "done\n");
        brm_plan_reset(&p);
    }
    if (plan_of(action_for(a, "zd", 1), "ap 1/\xc3\xa9^x", &p) == 0) {
        CHECK(p.closes && !p.req[BRM_STEP_CREATE].present);
        CHECK_HAS(p.req[BRM_STEP_UPDATE].body, "\"status\":\"solved\"");
        const char *open[BRM_NSTEPS] = { [BRM_STEP_LOOKUP] = lookup };
        walk(&p, "", open, trace);
        CHECK_HAS(trace->data, "\nupdate PUT https://acme.zendesk.com/api/v2/tickets/35437.json\n"
                               "done, forgets the ticket\n");
        brm_plan_reset(&p);
    }
}

/* A plain request comes as its parts, and brm_plan_plain makes it whole. */
static void check_webhook(const struct brm_actions *a) {
    const struct brm_action *x = action_for(a, "hook", 0);
    CHECK(x != NULL);
    if (!x) return;
    CHECK(x->plan == NULL && x->ticket == NULL);
    struct brm_plan p;
    brm_plan_plain(&p, x->method, x->url, x->headers, x->body, x->body_len, x->sign);
    const struct brm_request *r = &p.req[BRM_STEP_PLAIN];
    CHECK_STR(r->method, "PUT");
    CHECK_STR(r->url, "https://hooks.example.com/in");
    CHECK_INT(r->nheaders, 2);
    CHECK(has_header(r, "Content-Type: application/json"));
    CHECK(has_header(r, "X-Team: net ops"));
    CHECK_INT(r->sign, 1);
    CHECK_INT(r->body_len, 5);
    CHECK(r->body && memcmp(r->body, "a\0b\0c", 6) == 0);
    brm_plan_reset(&p);
}

static void check_adapters(void) {
    snprintf(dir, sizeof(dir), "/tmp/brume-plan-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    char *cmd = brm_xasprintf("mkdir -p %s/rules", dir);
    CHECK_INT(system(cmd), 0);
    free(cmd);
    write_file(
        "brume.lua",
        "sources = { mist = { path = '/mist', secret = 's' } }\n"
        "targets = {\n"
        "  sn = { kind = 'servicenow', url = 'https://acme.service-now.com/',\n"
        "         user = 'u', password = 'p' },\n"
        "  jira = { kind = 'jira', url = 'https://acme.atlassian.net', project = 'OPS',\n"
        "           email = 'a@b.c', token = 'tok' },\n"
        "  jdc = { kind = 'jira', url = 'https://jira.acme.corp', project = 'OPS',\n"
        "          token = 'pat', resolve_transition = '31' },\n"
        "  zd = { kind = 'zendesk', url = 'https://acme.zendesk.com', email = 'a@b.c',\n"
        "         token = 'tok' },\n"
        "  hook = { kind = 'webhook', url = 'https://hooks.example.com/in', method = 'PUT',\n"
        "           secret = 'whsec_c2VjcmV0', headers = { ['X-Team'] = 'net ops' } },\n"
        "}\n");
    write_file("rules/tickets.lua",
               "return { topics = 'alarms', on_event = function(ev)\n"
               "  local m = { title = 'AP down', text = 'ap-1 lost power', severity = 'critical',\n"
               "              dedup_key = 'ap 1/\xc3\xa9^x', action = ev.action }\n"
               "  for _, t in ipairs({ 'sn', 'jira', 'jdc', 'zd' }) do brume.send(t, m) end\n"
               "  if ev.action == 'trigger' then brume.send('hook', { raw = 'a\\0b\\0c' }) end\n"
               "end }\n");
    char *path = brm_xasprintf("%s/brume.lua", dir);
    struct brm_errors errs = { 0 };
    struct brm_config *cfg = brm_config_load(path, brm_api_open_for_config, NULL, &errs);
    free(path);
    struct brm_engine *e = cfg ? brm_engine_new(cfg, &errs) : NULL;
    CHECK(e != NULL);
    for (size_t i = 0; i < errs.n; i++) fprintf(stderr, "  %s\n", errs.v[i].msg);
    brm_errors_reset(&errs);
    if (e) {
        static const char body[] = "{\"topic\":\"alarms\",\"events\":[{\"action\":\"trigger\"},"
                                   "{\"action\":\"resolve\"}]}";
        struct brm_actions a = { 0 };
        struct brm_batch b = { "mist", 42, 1700000000.5, 0, NULL, 0 };
        struct brm_err err;
        CHECK_INT(brm_intake_run(e, body, strlen(body), &b, &a, NULL, NULL, &err), BRM_OK);
        CHECK_INT(a.n, 9);
        struct brm_buf trace;
        brm_buf_init(&trace);
        check_servicenow(&a, &trace);
        check_jira(&a, &trace);
        check_zendesk(&a, &trace);
        check_webhook(&a);
        brm_buf_reset(&trace);
        brm_actions_reset(&a);
        brm_engine_free(e);
    }
    brm_config_free(cfg);
    cmd = brm_xasprintf("rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    free(cmd);
}

int main(void) {
    brm_log_setup(BRM_LOG_WARN, BRM_LOG_LOGFMT);
    L = luaL_newstate();
    brm_json_open(L);
    lua_settop(L, 0);
    check_plain();
    check_decode_plain_json();
    check_decode_errors();
    check_start_after();
    check_url();
    check_extract();
    check_adapters();
    lua_close(L);
    return test_done();
}
