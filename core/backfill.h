/*
 * backfill: takes in what Mist failed to deliver. Mist does not retry a
 * webhook, but it keeps a delivery log per webhook, with the body of each
 * post it tried, for the topics that have delivery results (alarms,
 * audits, device-updowns, occupancy-alerts, ping). For a source that names
 * Mist's API (mist = { api, token, org_id | site_id, webhook_id }) a run
 * reads the failed deliveries of a window back from
 * {api}/api/v1/{orgs|sites}/<id>/webhooks/<webhook_id>/events/search and
 * hands each body to its host (the server), which runs it as a post on a
 * worker: journal, dedupe, rules, outbox.
 *
 * One thread of its own, with one libcurl easy handle, does every run in
 * turn: the catch-up at start (each source back to the last body the
 * journal holds of it, at most mist.catch_up), each source's schedule
 * (mist.every), and the runs `brume backfill` asks for; so requests stay
 * paced whoever asks (one per 0.75 s at most, under Mist's 5,000 an hour
 * per token). A 429 waits out its Retry-After, a 5xx or a network error is
 * tried again a few times with backoff, a 401 or 403 ends the run saying
 * what the token lacks. The token goes in the Authorization header and
 * nowhere else: no URL, log line, error or report holds it.
 *
 * Mist's search has no cursor: a window is paged by moving its start to the
 * second of the last result (brm_backfill_next_start), so the results of
 * that second come again on the next page; a result seen in the run is
 * passed over, and a body whose exact bytes the journal holds (a reader
 * connection to the store) is skipped without running rules. Bodies are
 * handed in one at a time, in Mist's order, each once the one before is
 * stored, so that rules see an AP go down before they see it come back.
 * A catch-up keeps where its unread part starts in a file of the data
 * folder (catch-up.<source>) until it reaches the end of its window, so a
 * restart meanwhile reads on from there: the bodies it took, and posts
 * since, are newer in the journal than what it had not read.
 *
 * Depends on store (reading), transfer (its Retry-After reading), json,
 * config, metrics, log, util; libcurl, OpenSSL's libcrypto, and a private
 * Lua VM that only decodes JSON.
 */
#ifndef BRM_BACKFILL_H
#define BRM_BACKFILL_H

#include <stddef.h>

#include "config.h"
#include "util.h"

#define BRM_BACKFILL_LIMIT 100  /* results a request asks for (Mist's default page) */
#define BRM_BACKFILL_PACE  0.75 /* seconds from one request to the next, at least */

/* Where the next page of a window starts. */
enum brm_backfill_step {
    BRM_BACKFILL_DONE,    /* the window is read */
    BRM_BACKFILL_NEXT,    /* at *NEXT, the second of the page's last result */
    BRM_BACKFILL_CROWDED, /* at *NEXT = START + 1: a whole page in START's second; past the
                             page's end, results of that second are missed */
};

/*
 * After a page of N results of the LIMIT asked for, of the window [START,
 * END) in whole seconds, sorted by time, the last one at LAST: where the
 * next page starts. The window shrinks at every step that is not DONE.
 */
enum brm_backfill_step brm_backfill_next_start(long start, long end, size_t n, size_t limit,
                                               double last, long *next);

/* The search URL of SRC's failed deliveries in [START, END), oldest first,
 * BRM_BACKFILL_LIMIT a page, of TOPIC only (or NULL: all), its ids and
 * topic escaped. It holds no token. The caller frees it. */
char *brm_backfill_url(const struct brm_source *src, long start, long end, const char *topic);

/* What a run takes in. */
struct brm_backfill_ask {
    const char *source;  /* NULL: every source that names Mist's API */
    double since, until; /* Mist's delivery times; UNTIL 0: now */
    const char *topic;   /* or NULL */
    int dry_run;         /* read Mist and say what would be taken; store and send nothing */
    int catch_up;        /* each source since the last body the journal holds of it (SINCE and
                            UNTIL are not read) */
};

/* 0 when ASK can run on CFG, or -1 with why in ERR: no such source, a
 * source that does not name Mist's API, or none that does. */
int brm_backfill_check(const struct brm_config *cfg, const struct brm_backfill_ask *ask,
                       struct brm_err *err);

/* How a run went. */
struct brm_backfill_report {
    int ok; /* every source's run went through its window */
    long found, taken, skipped, failed;
    long messages;       /* the rules of the bodies taken sent */
    struct brm_buf text; /* what `brume backfill` prints: per body, per source */
};
void brm_backfill_report_free(struct brm_backfill_report *r);

/* A body taken from the log, handed to the host. */
struct brm_backfill_body {
    struct brm_backfill *backfill;
    const char *source; /* its name */
    const char *body;
    size_t len;
    double timestamp; /* when Mist tried to post it */
};

/*
 * The host runs B as a post (on another thread: never the backfill's) and
 * then calls brm_backfill_taken. B, and its body, live until then.
 */
typedef void brm_backfill_take_fn(void *arg, const struct brm_backfill_body *b);
/* How a body handed in fared. */
struct brm_backfill_outcome {
    enum brm_status status; /* as the intake says: BRM_OK once stored */
    const char *reason;     /* why not, for another status */
    size_t events;          /* in the body */
    size_t duplicates;      /* of them, not run: seen within the source's dedupe window */
    size_t messages;        /* its rules sent */
};
/* Says how B fared (any thread; O is copied). */
void brm_backfill_taken(const struct brm_backfill_body *b, const struct brm_backfill_outcome *o);

/* A run is done: REPORT is the callee's (brm_backfill_report_free). On the
 * backfill's thread. */
typedef void brm_backfill_done_fn(void *arg, struct brm_backfill_report *report);

struct brm_backfill;

/* Runs on CFG's sources (a reference is taken), looking up bodies in the
 * store at STORE_PATH (a reader connection per run: none when it cannot be
 * opened), handing them to TAKE(ARG) (NULL: dry runs only). Counts in
 * metrics slot SLOT. */
struct brm_backfill *brm_backfill_new(const struct brm_config *cfg, const char *store_path,
                                      brm_backfill_take_fn *take, void *arg, int slot);
/* Starts the thread; with SCHEDULE, it also runs each source on its
 * mist.every. Returns 0, or -1 with ERR set. */
int brm_backfill_start(struct brm_backfill *bf, int schedule, struct brm_err *err);
/* Moves onto CFG, a reloaded config (any thread): the next run reads it,
 * and sources' schedules follow it. */
void brm_backfill_configure(struct brm_backfill *bf, const struct brm_config *cfg);
/* Queues a run of ASK (copied); DONE(ARG) gets its report when it ends.
 * Runs go one at a time, in the order they were asked for (any thread). */
void brm_backfill_ask(struct brm_backfill *bf, const struct brm_backfill_ask *ask,
                      brm_backfill_done_fn *done, void *arg);
/* Ends the run in progress at its next step (a request in flight is cut,
 * a body handed in is waited for), ends those queued (their reports say
 * brume is stopping), and joins the thread. */
void brm_backfill_stop(struct brm_backfill *bf);
void brm_backfill_free(struct brm_backfill *bf);

/* ASK as the query of the admin listener's POST /backfill, and back: the
 * strings parsed point into OUT's own storage (SOURCE, TOPIC of SIZE bytes
 * each). brm_backfill_parse returns 0, or -1 with why in ERR. */
void brm_backfill_query(const struct brm_backfill_ask *ask, struct brm_buf *out);
int brm_backfill_parse(const char *query, size_t len, struct brm_backfill_ask *ask, char *source,
                       char *topic, size_t size, struct brm_err *err);

/*
 * `brume backfill` while brume runs: asks the daemon whose admin listener
 * is at ADMIN ("host:port", as its lock file says) to run ASK, with the
 * admin TOKEN (or NULL), and waits for its report. Returns the answer's
 * HTTP status with its body in OUT, or -1 with ERR set when there was none.
 */
int brm_backfill_remote(const char *admin, const char *token, const struct brm_backfill_ask *ask,
                        struct brm_buf *out, struct brm_err *err);

#endif
