/*
 * plan: what a stored delivery asks the outbox to do, read back from the
 * JSON its adapter made: one request { method, url, headers, body, sign },
 * or for a ticket kind a plan of up to three - look the ticket up, create
 * it, update it - with `ref` paths saying where the ticket's id is in an
 * answer, "{ref}" in the update's URL, and `closes` for a plan that
 * resolves the ticket. This module decodes plans, picks the next step from
 * what the last one answered, and reads ids out of answers; it makes no
 * request and keeps no state, so it can be tested alone. Depends on json
 * (a private VM decodes), util.
 */
#ifndef BRM_PLAN_H
#define BRM_PLAN_H

#include <lua.h>
#include <stddef.h>

#include "util.h"

#define BRM_PLAN_MAX_REF 256

enum brm_step { BRM_STEP_PLAIN, BRM_STEP_LOOKUP, BRM_STEP_CREATE, BRM_STEP_UPDATE, BRM_NSTEPS };

/* One request of a plan. Strings are the plan's. */
struct brm_request {
    int present;
    char *method, *url, *body, *ref;
    size_t body_len;
    char **headers; /* "Name: value" */
    size_t nheaders;
    int sign; /* Standard Webhooks signing asked for */
};

struct brm_plan {
    int ticket; /* a ticket plan: lookup/create/update; else one plain request */
    int closes; /* resolves its ticket */
    struct brm_request req[BRM_NSTEPS];
};

/* Makes P a plain request of these parts (copied; HEADERS are
 * '\n'-separated "Name: value" lines, or NULL). */
void brm_plan_plain(struct brm_plan *p, const char *method, const char *url, const char *headers,
                    const char *body, size_t body_len, int sign);
/* Decodes the stored JSON of a delivery (a ticket plan when TICKET) into
 * P, using L (a VM that runs no user code) for the JSON. Returns 0, or -1
 * with ERR set ("the stored request is not JSON: <why>", "... is not a
 * JSON object", "the stored plan's update has no method or url") and
 * nothing in P to free. */
int brm_plan_decode(lua_State *L, const char *json, size_t len, int ticket, struct brm_plan *p,
                    struct brm_err *err);
void brm_plan_reset(struct brm_plan *p);

/* What a delivery does next. */
enum brm_plan_next {
    BRM_PLAN_SEND, /* make the request of *STEP */
    BRM_PLAN_DONE, /* nothing more to do: the delivery is done */
};

/* The first step of P, knowing whether the target's ticket for this key
 * has an id already (KNOWN). */
enum brm_plan_next brm_plan_start(const struct brm_plan *p, int known, enum brm_step *step);
/* The step after STEP answered 2xx, with or without a ticket id now
 * (KNOWN). */
enum brm_plan_next brm_plan_after(const struct brm_plan *p, enum brm_step step, int known,
                                  enum brm_step *next);

/* The URL of R with each "{ref}" replaced by REF (%-encoded as a path
 * segment): a new string. With no REF (NULL or "") the URL as it is. */
char *brm_plan_url(const struct brm_request *r, const char *ref);

/*
 * The id at dotted PATH ("result.0.sys_id") of the JSON answer BODY, in
 * OUT (SIZE bytes, cut to fit): array positions count from 0 (in an
 * object, digits are a key); "?field!=a|b" picks the first element of an
 * array whose field (a string, or a number as its text) is not a or b
 * ("?field=a|b": is; "?field" alone picks none). Returns 1 when found (a
 * non-empty string or a number), else 0.
 */
int brm_plan_extract_ref(lua_State *L, const char *body, size_t len, const char *path, char *out,
                         size_t size);

const char *brm_step_name(enum brm_step s);

#endif
