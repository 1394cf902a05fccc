/*
 * api: the `brume` module rules call (DESIGN.md, Rules). Functions that act
 * on the event being handled (send, emit) read the scope the engine sets
 * around each rule call and raise "brume.send can only be called while
 * handling an event" without one. brume.send runs the target's adapter and
 * appends the request it makes to the scope's list; brume.once, throttle
 * and state work on the shared state and note what they change in the same
 * list. The caller of the engine decides what happens to the list (store
 * it, or print it for `brume test`). Depends on sandbox, json, verify,
 * config, state, log, util.
 */
#ifndef BRM_API_H
#define BRM_API_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "sandbox.h"
#include "state.h"

/* Most messages one rule may send for one event, and the largest message. */
#define BRM_MAX_ACTIONS_PER_EVENT 100
#define BRM_MAX_MESSAGE           (1u << 20)
/* The longest order key an adapter may give a plain request. */
#define BRM_MAX_ORDER_KEY 1024
/* How deep brume.emit may chain, and how many events one event may emit. */
#define BRM_MAX_EMIT_DEPTH      8
#define BRM_MAX_EMITS_PER_EVENT 100

/* One message a rule sent: what the outbox delivers. */
struct brm_action {
    char *key; /* idempotency key "<delivery>:<event>:<rule>:<n>": the n-th message of that
                  rule for that event, stable across re-runs even when other rules change */
    char *rule;
    char *target;
    char *topic;
    char *event_id;
    size_t event;  /* position of the event in its batch, from 1 */
    size_t seq;    /* the n-th message sent for that event, from 1 */
    char *message; /* the message as JSON (dry runs only), or NULL */
    /* What the adapter made of it: a plain request... */
    char *method, *url;
    char *headers; /* "Name: value" lines, '\n'-separated, or NULL */
    char *body;    /* BODY_LEN bytes, or NULL */
    size_t body_len;
    int sign;      /* to be signed as Standard Webhooks do */
    char *plan;    /* ...or a ticket plan as JSON */
    char *display; /* the request with secrets masked, as JSON (dry runs only), or NULL */
    char *ticket;  /* the key this target's deliveries go by one at a time, oldest first: the
                      ticket plan's dedup key, or the plain request's `order`; or NULL */
};
/* What a body's rules did: the messages they sent. (What they changed in
 * the state is in the scope's transaction.) */
struct brm_actions {
    struct brm_action *v;
    size_t n, cap;
};

void brm_actions_reset(struct brm_actions *a); /* frees everything, keeps nothing */

/* What the running rule is handling. The engine owns it and sets it around
 * each call with brm_api_set_scope. */
struct brm_scope {
    uint64_t delivery; /* id of the body being handled */
    const char *rule;
    const char *rule_key; /* the rule's name as it goes into keys (%-encoded) */
    const char *topic;    /* normalised */
    const char *event_id; /* ev.id, ev.audit_id, or "topic#index" */
    size_t index;         /* position of the event in the batch, from 1 */
    int depth;            /* 0 for a posted event, n for one emitted n deep */
    struct brm_actions *sink;
    size_t sent;               /* messages sent for this event so far, by all rules */
    size_t rule_sent;          /* ...and by the rule running now (events it emitted included) */
    int emit_queue;            /* registry reference to the queue brume.emit fills */
    size_t *emitted;           /* events emitted for the posted event so far */
    struct brm_state_txn *txn; /* what state changes belong to (NULL: none) */
    int *busy;                 /* set when a state call met a key another transaction owns: the
                                  body must run again later (every state call then raises) */
};

struct brm_api;

/* Opens the brume module in SB's VM and exposes it (and print) to user
 * code. CFG must outlive the VM. The state lives in the VM. */
struct brm_api *brm_api_open(struct brm_sandbox *sb, const struct brm_config *cfg);
/* A brm_config_open_fn: opens the brume module in the VM where
 * brm_config_load has the targets' adapters check their options (some
 * adapters' checks use brume.base64 and the like). ARG is unused. */
void brm_api_open_for_config(struct brm_sandbox *sb, const struct brm_config *cfg, void *arg);
/* Loads the adapter of every target of the config into the VM, for
 * brume.send. Returns 0, or -1 with ERR set. */
int brm_api_load_targets(struct brm_api *api, struct brm_err *err);
/* In a dry run (brume test) each action also carries its request with the
 * target's secrets masked. */
void brm_api_set_dry_run(struct brm_api *api, int on);
/* The state brume.once, brume.throttle and brume.state use (borrowed). */
void brm_api_set_state(struct brm_api *api, struct brm_state *state);
/* Rules read the time from CLOCK(ARG) (brume test's simulated clock);
 * NULL: the real one. */
void brm_api_set_clock(struct brm_api *api, double (*clock)(void *arg), void *arg);
/* Sets (or clears, with NULL) the scope of the next calls. */
void brm_api_set_scope(struct brm_api *api, struct brm_scope *scope);

#endif
