#define _GNU_SOURCE
#include "outbox.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "plan.h"
#include "stream.h"
#include "transfer.h"
#include "verify.h"

#define BACKOFF_CAP   600.0 /* the longest wait between two attempts */
#define POLL_INTERVAL 5.0   /* look at the store at least this often */
#define FILE_BATCH    256   /* kind-file deliveries one pass may make */
#define ANSWER_LOGGED 256   /* bytes of an answer kept in the attempts log */

struct target_rt {
    const struct brm_target *t;
    const struct brm_config *cfg; /* T's (a reference) */
    int retired;                  /* a reload removed it: freed when its last attempt ends */
    int inflight;
    double tokens, refilled;   /* rate: a token bucket of one */
    int fd;                    /* kind file */
    struct brm_kafka *kafka;   /* kind kafka */
    struct brm_stream *stream; /* kind redis-stream */
    struct brm_counter *done, *retried, *dead;
};

/* One delivery's attempt: its plan, and the step it is at. */
struct job {
    struct brm_outbox *ob;
    struct target_rt *tr;
    struct job *next;
    int64_t id;
    char *key, *ticket, *rule, *event;
    int attempts;
    int secret; /* its stored request may hold a secret (holds_secret) */
    double created, expires;
    struct brm_plan plan;
    enum brm_step step;
    char ref[BRM_PLAN_MAX_REF];
    struct brm_transfer *x;
    struct brm_kafka_send *ks;      /* a kafka message on its way */
    struct brm_stream_add *sa;      /* a stream entry on its way */
    char **sign;                    /* Standard Webhooks headers of the current step */
    char answer[ANSWER_LOGGED + 1]; /* the start of the last step's answer */
};

/* The outcome of an attempt, on its way to the store (and its log). */
struct result {
    int64_t id;
    int tried;  /* attempts before this one */
    int secret; /* its request holds a secret (brm_store_finish) */
    enum brm_delivery_state state;
    double next_at;
    int status;
    char *error;
    double at;    /* when it ended */
    char *answer; /* the start of the answer, masked, or NULL */
};

/* A ticket's id learnt (REF) or forgotten (NULL), on its way to the store. */
struct ticket_op {
    char *target, *key, *ref;
};

/* What the outbox learnt, written by the journal's writer in one go. */
struct record {
    struct brm_journal_job job; /* first: the journal's job is the record */
    struct brm_outbox *ob;
    struct result *results;
    size_t n;
    struct ticket_op *tickets;
    size_t ntickets;
    int stored;
    char error[512];
};

struct brm_outbox {
    const struct brm_config *cfg; /* a reference */
    struct brm_store *store;      /* the outbox thread's connection: it only reads */
    struct brm_journal *journal;  /* writes go through it */
    struct target_rt **targets;
    size_t ntargets;
    pthread_mutex_t lock; /* guards next_cfg, recorded */
    pthread_cond_t recorded_cond;
    const struct brm_config *next_cfg; /* a reload's, for the thread to take */
    struct record *recorded;           /* back from the writer */
    pthread_t thread;
    int running;
    struct event_base *base;
    int mailfd;
    struct event *mail, *timer, *work, *stop_timer;
    struct brm_transfers *transfers;
    lua_State *L; /* decodes requests and answers; no user code */
    struct job *jobs;
    /* Outcomes and tickets learnt since the last record was handed over. */
    struct result *results;
    size_t nresults, cap_results;
    struct ticket_op *tickets;
    size_t ntickets, cap_tickets;
    struct record *recording; /* with the writer now (one at a time) */
    _Atomic int stopping;
    double stop_wait;
    double paused_until; /* the store refused the last outcomes */
    double last_count, last_orphans;
    _Atomic long pending;
    _Atomic long long oldest_ms;
};

static void take_config(struct brm_outbox *ob, const struct brm_config *cfg);
static void schedule(struct brm_outbox *ob);

/* ---- masking ------------------------------------------------------------ */

/* How much of secret URL S may show: its scheme and host, as the adapters'
 * masking in `brume test` shows them: "https://hooks.slack.com/" then "****". */
static size_t shown_part(const char *s) {
    size_t scheme = strncmp(s, "https://", 8) == 0 ? 8 : strncmp(s, "http://", 7) == 0 ? 7 : 0;
    if (!scheme) return 0;
    size_t host = strcspn(s + scheme, "/@");
    return s[scheme + host] == '/' ? scheme + host + 1 : 0;
}

void brm_outbox_mask(const struct brm_target *t, const char *s, struct brm_buf *out) {
    out->len = 0;
    brm_buf_puts(out, "");
    while (*s) {
        size_t best = 0, shown = 0;
        for (size_t i = 0; t && i < t->nsecrets; i++) {
            size_t n = strlen(t->secrets[i]);
            if (n >= 4 && strncmp(s, t->secrets[i], n) == 0 && n > best) {
                best = n;
                shown = shown_part(t->secrets[i]);
            }
        }
        if (best) {
            brm_buf_append(out, s, shown);
            brm_buf_puts(out, "****");
            s += best;
        } else {
            brm_buf_append(out, s++, 1);
        }
    }
}

void brm_outbox_wake(struct brm_outbox *ob) {
    uint64_t one = 1;
    if (write(ob->mailfd, &one, sizeof(one)) < 0) { /* the poll finds the work anyway */
    }
}

long brm_outbox_pending(const struct brm_outbox *ob, double *oldest) {
    if (oldest) *oldest = (double)atomic_load(&ob->oldest_ms) / 1000;
    return atomic_load(&ob->pending);
}

char *brm_outbox_store_path(const struct brm_config *cfg) {
    return brm_path_join(cfg->data_dir, "brume.db");
}

/* ---- what is learnt: outcomes and tickets ----------------------------------- */

static void add_result(struct brm_outbox *ob, int64_t id, int tried, int secret,
                       enum brm_delivery_state state, double next_at, int status, const char *error,
                       double at, const char *answer) {
    if (ob->nresults == ob->cap_results) {
        ob->cap_results = ob->cap_results ? ob->cap_results * 2 : 16;
        ob->results = brm_xrealloc(ob->results, ob->cap_results * sizeof(*ob->results));
    }
    ob->results[ob->nresults++] =
        (struct result){ .id = id,
                         .tried = tried,
                         .secret = secret,
                         .state = state,
                         .next_at = next_at,
                         .status = status,
                         .error = error ? brm_xstrdup(error) : NULL,
                         .at = at,
                         .answer = answer && *answer ? brm_xstrdup(answer) : NULL };
    event_active(ob->work, 0, 0);
}

static void add_ticket(struct brm_outbox *ob, const char *target, const char *key,
                       const char *ref) {
    if (ob->ntickets == ob->cap_tickets) {
        ob->cap_tickets = ob->cap_tickets ? ob->cap_tickets * 2 : 8;
        ob->tickets = brm_xrealloc(ob->tickets, ob->cap_tickets * sizeof(*ob->tickets));
    }
    ob->tickets[ob->ntickets++] =
        (struct ticket_op){ brm_xstrdup(target), brm_xstrdup(key), ref ? brm_xstrdup(ref) : NULL };
}

static void free_record(struct record *r) {
    for (size_t i = 0; i < r->n; i++) {
        free(r->results[i].error);
        free(r->results[i].answer);
    }
    for (size_t i = 0; i < r->ntickets; i++) {
        free(r->tickets[i].target);
        free(r->tickets[i].key);
        free(r->tickets[i].ref);
    }
    free(r->results);
    free(r->tickets);
    free(r);
}

/* The newest ticket op for (TARGET, KEY) in OPS, or NULL. */
static const struct ticket_op *find_ticket(const struct ticket_op *ops, size_t n,
                                           const char *target, const char *key) {
    for (size_t i = n; i-- > 0;)
        if (strcmp(ops[i].target, target) == 0 && strcmp(ops[i].key, key) == 0) return &ops[i];
    return NULL;
}

/* The ticket TARGET opened for KEY: what this thread learnt and has not
 * seen stored yet first, then the store. Returns 1 with REF, or 0. */
static int known_ticket(struct brm_outbox *ob, const char *target, const char *key, char *ref,
                        size_t size) {
    const struct ticket_op *op = find_ticket(ob->tickets, ob->ntickets, target, key);
    if (!op && ob->recording)
        op = find_ticket(ob->recording->tickets, ob->recording->ntickets, target, key);
    if (op) {
        snprintf(ref, size, "%s", op->ref ? op->ref : "");
        return op->ref != NULL;
    }
    return brm_store_ticket(ob->store, target, key, ref, size) > 0;
}

/* 1 when delivery ID must not start: it is running, or its outcome is not
 * stored yet (the store still says pending). */
static int is_busy(struct brm_outbox *ob, int64_t id) {
    for (struct job *j = ob->jobs; j; j = j->next)
        if (j->id == id) return 1;
    for (size_t i = 0; i < ob->nresults; i++)
        if (ob->results[i].id == id) return 1;
    for (size_t i = 0; ob->recording && i < ob->recording->n; i++)
        if (ob->recording->results[i].id == id) return 1;
    return 0;
}

static int write_record(struct brm_journal_job *job, struct brm_store *st, struct brm_err *err) {
    struct record *r = (struct record *)job;
    for (size_t i = 0; i < r->n; i++) {
        struct result *x = &r->results[i];
        struct brm_attempt a = { x->at, x->status, x->answer, x->error };
        if (brm_store_finish(st, x->id, x->tried, x->secret, x->state, x->next_at, x->status,
                             x->error, err) < 0 ||
            brm_store_add_attempt(st, x->id, x->tried, x->state, &a, err) < 0)
            return -1;
    }
    for (size_t i = 0; i < r->ntickets; i++) {
        struct ticket_op *t = &r->tickets[i];
        int rc = t->ref ? brm_store_set_ticket(st, t->target, t->key, t->ref, err)
                        : brm_store_forget_ticket(st, t->target, t->key, err);
        if (rc < 0) return -1;
    }
    return 0;
}

/* On the writer's thread: back to the outbox's. */
static void record_done(struct brm_journal_job *job, int stored, const struct brm_err *err) {
    struct record *r = (struct record *)job;
    struct brm_outbox *ob = r->ob;
    r->stored = stored;
    if (!stored) snprintf(r->error, sizeof(r->error), "%s", err->msg);
    pthread_mutex_lock(&ob->lock);
    ob->recorded = r;
    pthread_cond_signal(&ob->recorded_cond);
    pthread_mutex_unlock(&ob->lock);
    brm_outbox_wake(ob);
}

/* Hands what was learnt to the writer, unless a record is with it already
 * (what comes meanwhile waits for the next: records are batches). */
static void hand_over(struct brm_outbox *ob) {
    if (ob->recording || (!ob->nresults && !ob->ntickets)) return;
    if (brm_time_now() < ob->paused_until) return;
    struct record *r = brm_xcalloc(1, sizeof(*r));
    r->ob = ob;
    r->results = ob->results;
    r->n = ob->nresults;
    r->tickets = ob->tickets;
    r->ntickets = ob->ntickets;
    ob->results = NULL;
    ob->nresults = ob->cap_results = 0;
    ob->tickets = NULL;
    ob->ntickets = ob->cap_tickets = 0;
    r->job.write = write_record;
    r->job.done = record_done;
    ob->recording = r;
    brm_journal_submit(ob->journal, &r->job);
}

/* A record came back: done, or refused - then what it held is learnt
 * again, to be handed over after a pause (else a delivery done but still
 * pending in the store would be sent again and again). */
static void take_recorded(struct brm_outbox *ob) {
    pthread_mutex_lock(&ob->lock);
    struct record *r = ob->recorded;
    ob->recorded = NULL;
    pthread_mutex_unlock(&ob->lock);
    if (!r) return;
    ob->recording = NULL;
    if (!r->stored) {
        if (brm_time_now() >= ob->paused_until) /* once per pause, not per pass */
            brm_log_error("outbox: cannot record delivery outcomes; pausing", "error", r->error);
        ob->paused_until = brm_time_now() + POLL_INTERVAL;
        for (size_t i = 0; i < r->n; i++) {
            struct result *x = &r->results[i];
            add_result(ob, x->id, x->tried, x->secret, x->state, x->next_at, x->status, x->error,
                       x->at, x->answer);
        }
        for (size_t i = 0; i < r->ntickets; i++)
            add_ticket(ob, r->tickets[i].target, r->tickets[i].key, r->tickets[i].ref);
    }
    free_record(r);
}

/* ---- jobs --------------------------------------------------------------- */

static void free_sign(struct job *job) {
    for (int i = 0; job->sign && i < 3; i++) free(job->sign[i]);
    free(job->sign);
    job->sign = NULL;
}

static void job_free(struct job *job) {
    brm_transfer_cancel(job->x);
    brm_kafka_cancel(job->ks);
    brm_stream_cancel(job->sa);
    brm_plan_reset(&job->plan);
    free_sign(job);
    free(job->key);
    free(job->ticket);
    free(job->rule);
    free(job->event);
    free(job);
}

static void target_free(struct target_rt *tr) {
    if (!tr) return;
    if (tr->fd >= 0) close(tr->fd);
    brm_kafka_free(tr->kafka);
    brm_stream_free(tr->stream);
    brm_config_free(tr->cfg);
    free(tr);
}

static void unlink_job(struct job *job) {
    struct job **p = &job->ob->jobs;
    while (*p && *p != job) p = &(*p)->next;
    if (*p) *p = job->next;
    if (--job->tr->inflight == 0 && job->tr->retired) {
        target_free(job->tr);
        job->tr = NULL;
    }
}

/* Full jitter: anywhere up to the exponential ceiling (but not at once: at
 * least the backoff, or a second), and never before the server said to
 * come back. */
static double backoff(const struct brm_target *t, int attempts, double retry_after) {
    double base = t->backoff > 0 ? t->backoff : 2;
    double ceiling = fmin(BACKOFF_CAP, base * pow(2, attempts));
    double delay = fmax(fmin(1.0, base), ceiling * ((double)random() / RAND_MAX));
    return fmax(delay, retry_after);
}

/* The attempt is over: done, or dead, or pending again after a backoff. */
static void job_finish(struct job *job, int done, int retry, int status, const char *reason,
                       double retry_after) {
    struct brm_outbox *ob = job->ob;
    struct target_rt *tr = job->tr;
    double now = brm_time_now();
    char id[32], attempt[16], st[16], request[32];
    snprintf(id, sizeof(id), "%lld", (long long)job->id);
    /* The key starts with the id of the body that sent it: its request. */
    snprintf(request, sizeof(request), "%.*s", (int)strcspn(job->key, ":"), job->key);
    snprintf(attempt, sizeof(attempt), "%d", job->attempts + 1);
    snprintf(st, sizeof(st), "%d", status);
    struct brm_buf masked, answer;
    brm_buf_init(&masked);
    brm_buf_init(&answer);
    brm_outbox_mask(tr->t, reason ? reason : "", &masked);
    brm_outbox_mask(tr->t, job->answer, &answer);
    double delay = done ? 0 : backoff(tr->t, job->attempts, retry_after);
    if (done) {
        add_result(ob, job->id, job->attempts, job->secret, BRM_DELIVERY_DONE, now, status, NULL,
                   now, answer.data);
        brm_counter_add(tr->done, 1);
        brm_log_debug("delivered", "target", tr->t->name, "delivery", id, "request", request,
                      "event", job->event, "status", st);
    } else if (retry && now + delay <= job->expires) {
        add_result(ob, job->id, job->attempts, job->secret, BRM_DELIVERY_PENDING, now + delay,
                   status, masked.data, now, answer.data);
        brm_counter_add(tr->retried, 1);
        char in[32];
        snprintf(in, sizeof(in), "%.0fs", delay);
        brm_log_warn("delivery failed; will retry", "target", tr->t->name, "delivery", id,
                     "request", request, "event", job->event, "attempt", attempt, "status", st,
                     "error", masked.data, "retry_in", in);
    } else {
        char why[600];
        if (retry)
            snprintf(why, sizeof(why), "gave up after %.0fs: %s", now - job->created, masked.data);
        else
            snprintf(why, sizeof(why), "%s", masked.data);
        add_result(ob, job->id, job->attempts, job->secret, BRM_DELIVERY_DEAD, now, status, why,
                   now, answer.data);
        brm_counter_add(tr->dead, 1);
        brm_log_error("delivery dead", "target", tr->t->name, "delivery", id, "request", request,
                      "rule", job->rule, "event", job->event, "attempts", attempt, "status", st,
                      "error", why);
    }
    brm_buf_reset(&masked);
    brm_buf_reset(&answer);
    unlink_job(job); /* may free TR */
    job_free(job);
}

/* Standard Webhooks: webhook-id (the delivery key, the same on every
 * attempt), webhook-timestamp and webhook-signature, made now. */
static void sign_headers(struct job *job, const struct brm_request *r) {
    const char *secret = job->tr->t->signing_secret;
    size_t len = strlen(secret), keylen = len;
    unsigned char *key = brm_xmalloc(len + 4), mac[BRM_VERIFY_MAX_MAC];
    if (strncmp(secret, "whsec_", 6) == 0) { /* the adapter's check made sure it decodes */
        long n = brm_base64_decode(secret + 6, len - 6, key);
        keylen = n > 0 ? (size_t)n : 0;
    } else {
        memcpy(key, secret, len);
    }
    long ts = (long)brm_time_now();
    char *content =
        brm_xasprintf("%s.%ld.%.*s", job->key, ts, (int)r->body_len, r->body ? r->body : "");
    size_t n = brm_verify_hmac(BRM_VERIFY_SHA256, key, keylen, content, strlen(content), mac);
    char sig[BRM_VERIFY_MAX_MAC * 2];
    brm_base64_encode(mac, n, sig);
    free_sign(job);
    job->sign = brm_xcalloc(3, sizeof(char *));
    job->sign[0] = brm_xasprintf("webhook-id: %s", job->key);
    job->sign[1] = brm_xasprintf("webhook-timestamp: %ld", ts);
    job->sign[2] = brm_xasprintf("webhook-signature: v1,%s", sig);
    free(content);
    memset(key, 0, keylen);
    free(key);
}

static void step_done(void *arg, const struct brm_transfer_result *res);

/* Starts the HTTP request of the job's current step. */
static void perform(struct job *job) {
    const struct brm_target *t = job->tr->t;
    const struct brm_request *r = &job->plan.req[job->step];
    char *url = brm_plan_url(r, job->ref);
    size_t nheaders = r->nheaders;
    const char **headers = brm_xcalloc(nheaders + 3, sizeof(char *));
    for (size_t i = 0; i < r->nheaders; i++) headers[i] = r->headers[i];
    if (r->sign && t->signing_secret) {
        sign_headers(job, r);
        for (int i = 0; i < 3; i++) headers[nheaders++] = job->sign[i];
    }
    struct brm_transfer_request req = { r->method, url,      r->body,  r->body_len,
                                        headers,   nheaders, t->proxy, t->timeout };
    job->x = brm_transfer_start(job->ob->transfers, &req, step_done, job);
    free(headers);
    free(url);
    if (!job->x) job_finish(job, 0, 1, 0, "cannot create a transfer", 0);
}

/* Moves a plan on after a step that answered 2xx (or finishes the job). */
static void next_step(struct job *job, int status) {
    enum brm_step next;
    if (brm_plan_after(&job->plan, job->step, job->ref[0] != '\0', &next) == BRM_PLAN_SEND) {
        job->step = next;
        perform(job);
        return;
    }
    /* Resolved: the next message for this key is a new alert, with a
     * ticket of its own (the lookups find open tickets only). */
    if (job->step == BRM_STEP_UPDATE && job->plan.closes)
        add_ticket(job->ob, job->tr->t->name, job->ticket, NULL);
    job_finish(job, 1, 0, status, NULL, 0);
}

/* A step's transfer ended: decide what the job does next. */
static void step_done(void *arg, const struct brm_transfer_result *res) {
    struct job *job = arg;
    job->x = NULL; /* the transfer frees itself */
    size_t kept = res->answer_len < ANSWER_LOGGED ? res->answer_len : ANSWER_LOGGED;
    memcpy(job->answer, res->answer ? res->answer : "", res->answer ? kept : 0);
    job->answer[res->answer ? kept : 0] = '\0';
    if (res->failed || res->status < 200 || res->status > 299) {
        char why[512];
        if (res->failed)
            snprintf(why, sizeof(why), "%s: %s", brm_step_name(job->step), res->error);
        else
            snprintf(why, sizeof(why), "%s: HTTP %d: %.200s", brm_step_name(job->step), res->status,
                     res->answer);
        for (char *p = why; *p; p++)
            if (*p == '\n' || *p == '\r') *p = ' ';
        int retry = res->failed ? !res->config_error
                                : res->status == 408 || res->status == 425 || res->status == 429 ||
                                      res->status >= 500;
        job_finish(job, 0, retry, res->status, why, res->retry_after);
        return;
    }
    const struct brm_request *r = &job->plan.req[job->step];
    if ((job->step == BRM_STEP_LOOKUP || job->step == BRM_STEP_CREATE) && r->ref) {
        char ref[BRM_PLAN_MAX_REF] = "";
        int found = brm_plan_extract_ref(job->ob->L, res->answer, res->answer_len, r->ref, ref,
                                         sizeof(ref));
        if (!found && job->step == BRM_STEP_CREATE) {
            char why[300];
            snprintf(why, sizeof(why), "create: the answer has no %s", r->ref);
            job_finish(job, 0, 0, res->status, why, 0);
            return;
        }
        if (found) {
            snprintf(job->ref, sizeof(job->ref), "%s", ref);
            add_ticket(job->ob, job->tr->t->name, job->ticket, ref);
        }
    }
    next_step(job, res->status);
}

/* Appends the line of a kind-file delivery, stamped with when: the
 * adapter's JSON object gets an "at" member first. */
static void append_line(struct job *job) {
    const struct brm_request *r = &job->plan.req[BRM_STEP_PLAIN];
    struct brm_buf line;
    char at[40];
    brm_buf_init(&line);
    brm_time_iso8601(brm_time_now(), at, sizeof(at));
    brm_buf_printf(&line, "{\"at\":\"%s\"", at);
    if (r->body_len > 2 && r->body[0] == '{') {
        brm_buf_puts(&line, ",");
        brm_buf_append(&line, r->body + 1, r->body_len - 1);
    } else {
        brm_buf_puts(&line, "}");
    }
    brm_buf_puts(&line, "\n");
    ssize_t w = write(job->tr->fd, line.data, line.len);
    int ok = w == (ssize_t)line.len;
    char why[256] = "";
    if (!ok)
        snprintf(why, sizeof(why), "writing %s failed: %s", job->tr->t->path,
                 w < 0 ? strerror(errno) : "short write");
    brm_buf_reset(&line);
    job_finish(job, ok, 1, 0, why, 0);
}

/* A kafka message's delivery report came: the outcome of its attempt. */
static void produced(void *arg, const struct brm_kafka_result *res) {
    struct job *job = arg;
    job->ks = NULL;
    if (res->failed) {
        job_finish(job, 0, res->retry, 0, res->error, 0);
        return;
    }
    snprintf(job->answer, sizeof(job->answer), "partition %d offset %lld", (int)res->partition,
             (long long)res->offset);
    job_finish(job, 1, 0, 0, NULL, 0);
}

/* Hands a kafka delivery's message to the target's producer: the topic is
 * the request's URL after "kafka:", the key its order key, the value its
 * body. */
static void produce(struct job *job) {
    const struct brm_request *r = &job->plan.req[BRM_STEP_PLAIN];
    if (job->plan.ticket || !r->url || strncmp(r->url, "kafka:", 6) != 0 || !r->url[6]) {
        job_finish(job, 0, 0, 0, "the stored request is not a kafka message (kafka:<topic>)", 0);
        return;
    }
    struct brm_kafka_message m = {
        r->url + 6, job->ticket, r->body, r->body_len, (const char *const *)r->headers, r->nheaders
    };
    struct brm_kafka_result now;
    job->ks = brm_kafka_send(job->tr->kafka, &m, produced, job, &now);
    if (!job->ks) job_finish(job, 0, now.retry, 0, now.error, 0);
}

/* A stream entry's reply came: the outcome of its attempt. */
static void added(void *arg, const struct brm_stream_result *res) {
    struct job *job = arg;
    job->sa = NULL;
    if (res->failed) {
        job_finish(job, 0, res->retry, 0, res->error, 0);
        return;
    }
    snprintf(job->answer, sizeof(job->answer), "id %s", res->id);
    job_finish(job, 1, 0, 0, NULL, 0);
}

/* The value of setting NAME of target T (an adapter's settings), or NULL. */
static const char *setting(const struct brm_target *t, const char *name) {
    for (size_t i = 0; i < t->nsettings; i++)
        if (strcmp(t->settings[2 * i], name) == 0) return t->settings[2 * i + 1];
    return NULL;
}

/* Hands a redis-stream delivery's entry to the target's client: the stream
 * is the request's URL after "redis-stream:", the fields its headers, the
 * field "message" its body; the cap is the target's maxlen. */
static void add_entry(struct job *job) {
    const struct brm_request *r = &job->plan.req[BRM_STEP_PLAIN];
    static const char scheme[] = "redis-stream:";
    size_t n = sizeof(scheme) - 1;
    if (job->plan.ticket || !r->url || strncmp(r->url, scheme, n) != 0 || !r->url[n]) {
        job_finish(job, 0, 0, 0, "the stored request is not a stream entry (redis-stream:<key>)",
                   0);
        return;
    }
    const char *maxlen = setting(job->tr->t, "maxlen"), *exact = setting(job->tr->t, "exact");
    struct brm_stream_entry e = { r->url + n,
                                  maxlen ? atoll(maxlen) : 0,
                                  exact && strcmp(exact, "true") == 0,
                                  (const char *const *)r->headers,
                                  r->nheaders,
                                  r->body,
                                  r->body_len };
    job->sa = brm_stream_add(job->tr->stream, &e, added, job);
}

/* 1 when D's stored request may hold one of T's secrets other than in its
 * URL (which a done delivery keeps): a ticket's plan (its credentials go
 * in as Basic authorisation, encoded), or headers or a body that hold one
 * as it is (an API key, a routing key). */
static int holds_secret(const struct brm_target *t, const struct brm_delivery *d) {
    if (d->plan) return 1;
    for (size_t i = 0; i < t->nsecrets; i++) {
        const char *v = t->secrets[i];
        size_t n = strlen(v);
        if (n == 0) continue;
        if ((d->headers && strstr(d->headers, v)) ||
            (d->body && memmem(d->body, d->body_len, v, n)))
            return 1;
    }
    return 0;
}

static void start_job(struct brm_outbox *ob, struct target_rt *tr, const struct brm_delivery *d) {
    struct brm_err err;
    struct job *job = brm_xcalloc(1, sizeof(*job));
    job->ob = ob;
    job->tr = tr;
    job->id = d->id;
    job->key = brm_xstrdup(d->key);
    job->ticket = d->ticket ? brm_xstrdup(d->ticket) : NULL;
    job->rule = brm_xstrdup(d->rule);
    job->event = brm_xstrdup(d->event);
    job->attempts = d->attempts;
    job->secret = holds_secret(tr->t, d);
    job->created = d->created;
    job->expires = d->expires;
    job->next = ob->jobs;
    ob->jobs = job;
    tr->inflight++;
    /* A plain request comes as its parts; a ticket's plan (and a request
     * stored by an older brume) as JSON. */
    const char *plan = d->plan ? d->plan : "";
    if (d->method && d->url) {
        brm_plan_plain(&job->plan, d->method, d->url, d->headers, d->body, d->body_len, d->sign);
    } else if (brm_plan_decode(ob->L, plan, strlen(plan), job->ticket != NULL, &job->plan, &err) <
               0) {
        job_finish(job, 0, 0, 0, err.msg, 0);
        return;
    }
    if (tr->fd >= 0) {
        append_line(job);
        return;
    }
    if (tr->kafka) {
        produce(job);
        return;
    }
    if (tr->stream) {
        add_entry(job);
        return;
    }
    int known = job->plan.ticket && job->ticket &&
                known_ticket(ob, tr->t->name, job->ticket, job->ref, sizeof(job->ref));
    if (brm_plan_start(&job->plan, known, &job->step) == BRM_PLAN_DONE) {
        job_finish(job, 1, 0, 0, NULL, 0); /* a resolve with no ticket: nothing to do */
        return;
    }
    perform(job);
}

/* ---- scheduling --------------------------------------------------------- */

struct pass {
    struct brm_outbox *ob;
    struct target_rt *tr;
    double now;
    int room; /* attempts this target may still start */
};

static int ticket_busy(struct brm_outbox *ob, struct target_rt *tr, const char *ticket) {
    for (struct job *j = ob->jobs; j; j = j->next)
        if (j->tr == tr && j->ticket && strcmp(j->ticket, ticket) == 0) return 1;
    return 0;
}

/* Takes tokens as time passed; 1 when one is there to spend. */
static int take_token(struct target_rt *tr, double now) {
    if (tr->t->rate <= 0) return 1;
    tr->tokens = fmin(1.0, tr->tokens + (now - tr->refilled) * tr->t->rate);
    tr->refilled = now;
    if (tr->tokens < 1.0) return 0;
    tr->tokens -= 1.0;
    return 1;
}

static int busy_due(void *arg, int64_t id) {
    return is_busy(((struct pass *)arg)->ob, id);
}

static int start_due(void *arg, const struct brm_delivery *d) {
    struct pass *p = arg;
    if (p->room <= 0) return 1;
    if (d->ticket && ticket_busy(p->ob, p->tr, d->ticket)) return 0;
    if (!take_token(p->tr, p->now)) return 1;
    start_job(p->ob, p->tr, d);
    p->room--;
    return 0;
}

static struct target_rt *target_rt(struct brm_outbox *ob, const char *name) {
    for (size_t i = 0; i < ob->ntargets; i++)
        if (ob->targets[i] && strcmp(ob->targets[i]->t->name, name) == 0) return ob->targets[i];
    return NULL;
}

/* Deliveries to a target no longer in the config cannot be made. */
static int bury_orphan(void *arg, const struct brm_delivery *d) {
    struct brm_outbox *ob = arg;
    if (target_rt(ob, d->target) || is_busy(ob, d->id)) return 0;
    char why[300];
    snprintf(why, sizeof(why), "no target named %s in the config", d->target);
    add_result(ob, d->id, d->attempts, 0, BRM_DELIVERY_DEAD, brm_time_now(), 0, why, brm_time_now(),
               NULL);
    return 0;
}

static void housekeeping(struct brm_outbox *ob, double now) {
    struct brm_err err;
    if (now - ob->last_orphans >= 60) {
        ob->last_orphans = now;
        brm_store_due(ob->store, now, 100, bury_orphan, ob, &err);
    }
    if (now - ob->last_count >= 1) {
        long count;
        double oldest;
        ob->last_count = now;
        if (brm_store_pending(ob->store, now, &count, &oldest) == 0) {
            atomic_store(&ob->pending, count);
            atomic_store(&ob->oldest_ms, (long long)(oldest * 1000));
        }
    }
}

/* Hands over what was learnt, starts what is due and may start, and sets
 * the timer for the next time something could be. */
static void schedule(struct brm_outbox *ob) {
    struct brm_err err;
    double now = brm_time_now(), wake = now + POLL_INTERVAL;
    take_recorded(ob);
    hand_over(ob);
    if (atomic_load(&ob->stopping)) return;
    if (now < ob->paused_until) {
        wake = ob->paused_until;
    } else {
        housekeeping(ob, now);
        for (size_t i = 0; i < ob->ntargets; i++) {
            struct target_rt *tr = ob->targets[i];
            /* A file append ends before the next starts: concurrency means
             * nothing there, and a pass takes a good batch. */
            int room = tr->fd >= 0 ? FILE_BATCH : (int)tr->t->concurrency - tr->inflight;
            struct pass p = { ob, tr, now, room };
            if (p.room <= 0) continue;
            if (brm_store_due_for(ob->store, tr->t->name, now, p.room + tr->inflight, busy_due,
                                  start_due, &p, &err) < 0) {
                brm_log_error("outbox: cannot read due deliveries", "error", err.msg);
                break;
            }
            if (tr->t->rate > 0 && tr->tokens < 1.0)
                wake = fmin(wake, now + (1.0 - tr->tokens) / tr->t->rate);
        }
        hand_over(ob); /* what ended at once (file targets, bad requests) */
        double due = brm_store_next_due(ob->store, now);
        if (due > 0) wake = fmin(wake, due);
    }
    struct timeval tv = { (time_t)(wake - now), (suseconds_t)(fmod(wake - now, 1.0) * 1e6) };
    evtimer_add(ob->timer, &tv);
}

static void on_work(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    schedule(arg);
}

static void on_mail(evutil_socket_t fd, short what, void *arg) {
    struct brm_outbox *ob = arg;
    uint64_t v;
    (void)what;
    if (read(fd, &v, sizeof(v)) < 0) { /* EAGAIN: already drained */
    }
    pthread_mutex_lock(&ob->lock);
    const struct brm_config *cfg = ob->next_cfg;
    ob->next_cfg = NULL;
    pthread_mutex_unlock(&ob->lock);
    if (cfg) {
        take_config(ob, cfg);
        brm_config_free(cfg);
    }
    if (atomic_load(&ob->stopping)) {
        take_recorded(ob);
        hand_over(ob);
        /* Let attempts in flight finish for a while, then leave. */
        if (!ob->jobs) {
            event_base_loopbreak(ob->base);
            return;
        }
        if (!evtimer_pending(ob->stop_timer, NULL)) {
            struct timeval tv = { (time_t)ob->stop_wait, 0 };
            evtimer_add(ob->stop_timer, &tv);
        }
        return;
    }
    schedule(ob);
}

static void on_stop_timer(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    event_base_loopbreak(((struct brm_outbox *)arg)->base);
}

/* Stopping: what was learnt goes to the store before the thread ends (an
 * outcome lost would only repeat an attempt, but a learnt ticket would be
 * opened again). */
static void write_last(struct brm_outbox *ob) {
    for (int tries = 0; tries < 3; tries++) {
        take_recorded(ob);
        ob->paused_until = 0;
        hand_over(ob);
        if (!ob->recording) return;
        pthread_mutex_lock(&ob->lock);
        while (!ob->recorded) pthread_cond_wait(&ob->recorded_cond, &ob->lock);
        pthread_mutex_unlock(&ob->lock);
    }
    take_recorded(ob); /* refused every time: the store is failing */
}

static void *outbox_main(void *arg) {
    struct brm_outbox *ob = arg;
    brm_thread_name("outbox");
    brm_metrics_set_slot(ob->cfg->workers + 1);
    srandom((unsigned)(brm_time_mono_ns() ^ (uint64_t)getpid())); /* jitter differs per run */
    schedule(ob);
    event_base_dispatch(ob->base);
    while (ob->jobs) { /* abandoned: they stay pending for the next start */
        struct job *j = ob->jobs;
        unlink_job(j);
        job_free(j);
    }
    write_last(ob);
    return NULL;
}

/* ---- targets ------------------------------------------------------------ */

/* Opens the file of a kind-file target for appending, making its folder. */
static int open_target_file(const struct brm_target *t, struct brm_err *err) {
    char *dir = brm_path_dir(t->path);
    brm_mkdirs(dir, 0750);
    free(dir);
    int fd = open(t->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        brm_err_set(err, "target %s: cannot open %s: %s", t->name, t->path, strerror(errno));
    return fd;
}

static int is_kafka(const struct brm_target *t) {
    return strcmp(t->kind, "kafka") == 0;
}

/* T's producer on the outbox's loop (kind kafka). */
static struct brm_kafka *start_kafka(struct brm_outbox *ob, const struct brm_target *t,
                                     struct brm_err *err) {
    struct brm_err why;
    struct brm_kafka *k =
        brm_kafka_new(ob->base, t->name, (const char *const *)t->settings, t->nsettings, &why);
    if (!k) {
        struct brm_buf masked;
        brm_buf_init(&masked);
        brm_outbox_mask(t, why.msg, &masked);
        brm_err_set(err, "target %s: %s", t->name, masked.data);
        brm_buf_reset(&masked);
        return NULL;
    }
    const char *mock = brm_kafka_mock_bootstraps(k);
    if (mock) brm_log_info("kafka: a mock cluster", "target", t->name, "bootstraps", mock);
    return k;
}

static int is_stream(const struct brm_target *t) {
    return strcmp(t->kind, "redis-stream") == 0;
}

/* T's Redis client, replying on the outbox's loop (kind redis-stream). */
static struct brm_stream *start_stream(struct brm_outbox *ob, const struct brm_target *t,
                                       struct brm_err *err) {
    struct brm_err why;
    const char *url = setting(t, "url");
    struct brm_stream *s = url ? brm_stream_new(ob->base, t->name, url, t->timeout, &why) : NULL;
    if (!url) brm_err_set(&why, "no url");
    if (!s) brm_err_set(err, "target %s: %s", t->name, why.msg); /* redis.c shows no password */
    return s;
}

static int same_settings(const struct brm_target *a, const struct brm_target *b) {
    if (a->nsettings != b->nsettings) return 0;
    for (size_t i = 0; i < 2 * a->nsettings; i++)
        if (strcmp(a->settings[i], b->settings[i]) != 0) return 0;
    return 1;
}

/* The outbox's side of target T of CFG (of which it takes a reference). */
static struct target_rt *target_new(struct brm_outbox *ob, const struct brm_config *cfg,
                                    const struct brm_target *t, struct brm_err *err) {
    struct target_rt *tr = brm_xcalloc(1, sizeof(*tr));
    tr->t = t;
    tr->cfg = brm_config_ref(cfg);
    tr->tokens = 1;
    tr->fd = t->path ? open_target_file(t, err) : -1;
    tr->done = brm_metrics_counter("brume_deliveries_total", "Delivery attempts by outcome.",
                                   "target", t->name, "outcome", "done", NULL);
    tr->retried = brm_metrics_counter("brume_deliveries_total", "Delivery attempts by outcome.",
                                      "target", t->name, "outcome", "retry", NULL);
    tr->dead = brm_metrics_counter("brume_deliveries_total", "Delivery attempts by outcome.",
                                   "target", t->name, "outcome", "dead", NULL);
    if ((t->path && tr->fd < 0) || (is_kafka(t) && !(tr->kafka = start_kafka(ob, t, err))) ||
        (is_stream(t) && !(tr->stream = start_stream(ob, t, err)))) {
        target_free(tr);
        return NULL;
    }
    return tr;
}

/* A reload gave kafka target TR new settings T: a new producer (what the
 * old one had in flight is purged and tried again). 0, or -1 when the new
 * one cannot start (the old one goes on). */
static int move_kafka(struct brm_outbox *ob, struct target_rt *tr, const struct brm_target *t,
                      struct brm_err *err) {
    if (tr->kafka && is_kafka(t) && same_settings(tr->t, t)) return 0;
    struct brm_kafka *k = is_kafka(t) ? start_kafka(ob, t, err) : NULL;
    if (is_kafka(t) && !k) return -1;
    struct brm_kafka *old = tr->kafka;
    tr->kafka = k;
    brm_kafka_free(old); /* its jobs finish, to be tried again */
    return 0;
}

/* The same for a redis-stream target's client. */
static int move_stream(struct brm_outbox *ob, struct target_rt *tr, const struct brm_target *t,
                       struct brm_err *err) {
    if (tr->stream && is_stream(t) && same_settings(tr->t, t) && tr->t->timeout == t->timeout)
        return 0;
    struct brm_stream *c = is_stream(t) ? start_stream(ob, t, err) : NULL;
    if (is_stream(t) && !c) return -1;
    struct brm_stream *old = tr->stream;
    tr->stream = c;
    brm_stream_free(old);
    return 0;
}

/* Moves the outbox onto CFG (a reload): a target of the same name keeps
 * its attempts in flight, its rate tokens and its counters, and takes the
 * new settings; a new target starts; one that is gone stays until its
 * last attempt ends. On the outbox thread. */
static void take_config(struct brm_outbox *ob, const struct brm_config *cfg) {
    struct brm_err err;
    struct target_rt **v = brm_xcalloc(cfg->ntargets, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < cfg->ntargets; i++) {
        const struct brm_target *t = &cfg->targets[i];
        struct target_rt *tr = target_rt(ob, t->name);
        if (!tr) {
            if (!(tr = target_new(ob, cfg, t, &err))) {
                brm_log_error("outbox: target not started", "target", t->name, "error", err.msg);
                continue;
            }
        } else {
            for (size_t k = 0; k < ob->ntargets; k++)
                if (ob->targets[k] == tr) ob->targets[k] = NULL; /* moved */
            if (!t->path && tr->fd >= 0) {                       /* no longer a file target */
                close(tr->fd);
                tr->fd = -1;
            }
            if (t->path && (!tr->t->path || strcmp(t->path, tr->t->path) != 0)) {
                int fd = open_target_file(t, &err);
                if (fd < 0) {
                    brm_log_error("outbox: target not moved", "target", t->name, "error", err.msg);
                    v[n++] = tr; /* goes on as it was */
                    continue;
                }
                if (tr->fd >= 0) close(tr->fd);
                tr->fd = fd;
            }
            if (((tr->kafka || is_kafka(t)) && move_kafka(ob, tr, t, &err) < 0) ||
                ((tr->stream || is_stream(t)) && move_stream(ob, tr, t, &err) < 0)) {
                brm_log_error("outbox: target not moved", "target", t->name, "error", err.msg);
                v[n++] = tr;
                continue;
            }
            const struct brm_config *old = tr->cfg;
            tr->t = t;
            tr->cfg = brm_config_ref(cfg);
            brm_config_free(old);
        }
        v[n++] = tr;
    }
    for (size_t k = 0; k < ob->ntargets; k++) {
        struct target_rt *tr = ob->targets[k];
        if (!tr) continue;
        if (tr->inflight)
            tr->retired = 1;
        else
            target_free(tr);
    }
    free(ob->targets);
    ob->targets = v;
    ob->ntargets = n;
    const struct brm_config *old = ob->cfg;
    ob->cfg = brm_config_ref(cfg);
    brm_config_free(old);
}

void brm_outbox_check_targets(const struct brm_config *cfg, int local, struct brm_errors *errs) {
    struct brm_err err;
    for (size_t i = 0; i < cfg->ntargets; i++) {
        const struct brm_target *t = &cfg->targets[i];
        if (is_kafka(t) &&
            brm_kafka_check((const char *const *)t->settings, t->nsettings, local, &err) < 0) {
            struct brm_buf masked;
            brm_buf_init(&masked);
            brm_outbox_mask(t, err.msg, &masked);
            brm_err_set(&err, "target %s: %s", t->name, masked.data);
            brm_buf_reset(&masked);
            brm_errors_add(errs, &err);
        }
        if (is_stream(t) && brm_stream_check(setting(t, "url"), &err) < 0) {
            char why[sizeof(err.msg)];
            snprintf(why, sizeof(why), "%s", err.msg);
            brm_err_set(&err, "target %s: %.400s", t->name, why);
            brm_errors_add(errs, &err);
        }
        if (!local || !cfg->targets[i].path) continue;
        int fd = open_target_file(&cfg->targets[i], &err);
        if (fd < 0)
            brm_errors_add(errs, &err);
        else
            close(fd);
    }
}

void brm_outbox_configure(struct brm_outbox *ob, const struct brm_config *cfg) {
    pthread_mutex_lock(&ob->lock);
    const struct brm_config *stale = ob->next_cfg; /* never taken: superseded */
    ob->next_cfg = brm_config_ref(cfg);
    pthread_mutex_unlock(&ob->lock);
    brm_config_free(stale);
    brm_outbox_wake(ob);
}

/* ---- life --------------------------------------------------------------- */

static double gauge_pending(void *arg) {
    return (double)brm_outbox_pending(arg, NULL);
}

static double gauge_oldest(void *arg) {
    double oldest;
    brm_outbox_pending(arg, &oldest);
    return oldest;
}

struct brm_outbox *brm_outbox_new(const struct brm_config *cfg, struct brm_journal *j,
                                  struct brm_err *err) {
    struct brm_outbox *ob = brm_xcalloc(1, sizeof(*ob));
    ob->cfg = brm_config_ref(cfg);
    ob->journal = j;
    ob->mailfd = -1;
    pthread_mutex_init(&ob->lock, NULL);
    pthread_cond_init(&ob->recorded_cond, NULL);
    char *path = brm_outbox_store_path(cfg);
    ob->store = brm_store_open(path, err);
    free(path);
    if (!ob->store) goto fail;
    ob->L = luaL_newstate();
    if (!ob->L) {
        brm_err_set(err, "outbox: cannot create a Lua state");
        goto fail;
    }
    brm_json_open(ob->L);
    lua_settop(ob->L, 0);
    struct event_config *ec = event_config_new();
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    ob->base = event_base_new_with_config(ec);
    event_config_free(ec);
    ob->mailfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!ob->base || ob->mailfd < 0) {
        brm_err_set(err, "outbox: cannot set up its event loop");
        goto fail;
    }
    ob->mail = event_new(ob->base, ob->mailfd, EV_READ | EV_PERSIST, on_mail, ob);
    ob->timer = evtimer_new(ob->base, on_work, ob);
    ob->work = event_new(ob->base, -1, 0, on_work, ob);
    ob->stop_timer = evtimer_new(ob->base, on_stop_timer, ob);
    event_add(ob->mail, NULL);
    ob->transfers = brm_transfers_new(ob->base);
    ob->targets = brm_xcalloc(cfg->ntargets, sizeof(*ob->targets));
    for (size_t i = 0; i < cfg->ntargets; i++) { /* a kafka target's producer is on the base */
        if (!(ob->targets[i] = target_new(ob, cfg, &cfg->targets[i], err))) goto fail;
        ob->ntargets++;
    }
    brm_metrics_gauge("brume_outbox_pending", "Deliveries not yet done or dead.", gauge_pending, ob,
                      NULL);
    brm_metrics_gauge("brume_outbox_oldest_seconds", "Age of the oldest pending delivery.",
                      gauge_oldest, ob, NULL);
    return ob;
fail:
    brm_outbox_free(ob);
    return NULL;
}

int brm_outbox_start(struct brm_outbox *ob, struct brm_err *err) {
    int rc = pthread_create(&ob->thread, NULL, outbox_main, ob);
    if (rc != 0) {
        brm_err_set(err, "cannot start the outbox thread: %s", strerror(rc));
        return -1;
    }
    ob->running = 1;
    return 0;
}

void brm_outbox_stop(struct brm_outbox *ob, double wait) {
    if (!ob || !ob->running) return;
    ob->stop_wait = wait;
    atomic_store(&ob->stopping, 1);
    brm_outbox_wake(ob);
    pthread_join(ob->thread, NULL);
    ob->running = 0;
}

void brm_outbox_free(struct brm_outbox *ob) {
    if (!ob) return;
    brm_outbox_stop(ob, 0);
    while (ob->jobs) {
        struct job *j = ob->jobs;
        unlink_job(j);
        job_free(j);
    }
    for (size_t i = 0; i < ob->nresults; i++) {
        free(ob->results[i].error);
        free(ob->results[i].answer);
    }
    free(ob->results);
    for (size_t i = 0; i < ob->ntickets; i++) {
        free(ob->tickets[i].target);
        free(ob->tickets[i].key);
        free(ob->tickets[i].ref);
    }
    free(ob->tickets);
    for (size_t i = 0; i < ob->ntargets; i++) target_free(ob->targets[i]); /* before the base */
    free(ob->targets);
    brm_transfers_free(ob->transfers);
    if (ob->mail) event_free(ob->mail);
    if (ob->timer) event_free(ob->timer);
    if (ob->work) event_free(ob->work);
    if (ob->stop_timer) event_free(ob->stop_timer);
    if (ob->base) event_base_free(ob->base);
    if (ob->mailfd >= 0) close(ob->mailfd);
    if (ob->L) lua_close(ob->L);
    brm_config_free(ob->next_cfg);
    brm_config_free(ob->cfg);
    pthread_cond_destroy(&ob->recorded_cond);
    pthread_mutex_destroy(&ob->lock);
    brm_store_close(ob->store);
    free(ob);
}

/* ---- showing actions ---------------------------------------------------- */

void brm_action_json(const struct brm_action *a, struct brm_buf *out) {
    brm_buf_puts(out, "{\"rule\":");
    brm_buf_json_string(out, a->rule, strlen(a->rule));
    brm_buf_puts(out, ",\"target\":");
    brm_buf_json_string(out, a->target, strlen(a->target));
    brm_buf_puts(out, ",\"topic\":");
    brm_buf_json_string(out, a->topic, strlen(a->topic));
    brm_buf_puts(out, ",\"event\":");
    brm_buf_json_string(out, a->event_id, strlen(a->event_id));
    brm_buf_puts(out, ",\"message\":");
    brm_buf_puts(out, a->message ? a->message : "null");
    brm_buf_puts(out, ",\"request\":");
    brm_buf_puts(out, a->display ? a->display : "null");
    brm_buf_puts(out, "}");
}
