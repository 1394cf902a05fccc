#include "journal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"

#define PRUNE_STEP        256 /* bodies one step of the ring looks at */
#define PRUNE_STEPS       8   /* steps one transaction may take past the cap */
#define CHECKPOINT_FRAMES 256 /* WAL pages (1 MB) that make the writer checkpoint, at most */
#define WAL_LIMIT         (16u << 20) /* a WAL file left larger is cut back to this */
#define UPKEEP_INTERVAL   1.0         /* seconds between two rounds of upkeep */
#define LINGER            0.005       /* seconds a job nobody waits for waits for company */
#define PROBE_MIN         (64u << 10) /* bytes a probe of a failing store writes, at least */
#define PROBE_MAX         (8u << 20)  /* and at most */
#define SLOW_WRITE        0.1         /* seconds: a transaction or checkpoint this long is logged */
#define SWEEP_STEP        512         /* deliveries a step of the sweep of done ones looks at */
#define SWEEP_STEPS       8           /* steps a second, at most, while each is full */
#define SWEEP_AGAIN       3600.0      /* seconds: the sweep starts again from the oldest */

static _Atomic int64_t next_id = 1;

void brm_journal_start(int64_t last) {
    atomic_store(&next_id, last + 1);
}

int64_t brm_journal_next_id(void) {
    return atomic_fetch_add(&next_id, 1);
}

struct brm_journal {
    struct brm_store *store; /* the write connection, the writer's alone once it runs */
    pthread_t thread;
    int started, running;
    brm_journal_upkeep_fn *upkeep;
    void *upkeep_arg;
    int slot; /* the writer's metrics slot */

    pthread_mutex_t lock; /* guards the fields below */
    pthread_cond_t wake;
    struct brm_journal_job *queue, **tail;
    int urgent;    /* a job in the queue does not linger */
    int lingering; /* the writer waits for more jobs that linger: they need not wake it */
    int stopping;
    double retention;   /* seconds */
    uint64_t max_bytes; /* of bodies; 0: no cap */
    struct brm_journal_stats stats;

    /* The writer's own. */
    int synced;          /* the connection waits for fsync on commit */
    int64_t last_body;   /* as saved in meta */
    int64_t pruned_upto; /* the highest body id the ring removed */
    int aging;           /* the last step for retention was full: more may be old */
    int64_t swept;       /* the sweep of done deliveries looked up to this id */
    double swept_from;   /* when it last started from the oldest (wall clock) */
    double next_upkeep;  /* these two on the monotonic clock (mono_now) */
    double written;      /* when the last batch was written */
    uint64_t failure_logged;
    uint64_t probe_bytes; /* what a probe of the store writes */
    long pruned;          /* bodies the ring removed since the last log line */
    double pruned_logged; /* when that was */
    struct brm_histogram *commit_seconds, *checkpoint_seconds;
    double slow_logged; /* when a slow write was last logged (mono_now) */
};

/* ---- groups ------------------------------------------------------------- */

int brm_journal_add_deliveries(const struct brm_config *cfg, struct brm_store *st,
                               const struct brm_actions *a, double now, struct brm_err *err) {
    int added = 0;
    for (size_t i = 0; i < a->n; i++) {
        const struct brm_action *x = &a->v[i];
        const struct brm_target *t = brm_config_target(cfg, x->target);
        struct brm_delivery d = {
            .key = x->key,
            .target = x->target,
            .rule = x->rule,
            .topic = x->topic,
            .event = x->event_id,
            .method = x->method,
            .url = x->url,
            .headers = x->headers,
            .body = x->body,
            .body_len = x->body_len,
            .sign = x->sign,
            .plan = x->plan,
            .ticket = x->ticket,
            .created = now,
            .next_at = now,
            .expires = now + (t ? t->max_age : 86400),
        };
        int rc = brm_store_add_delivery(st, &d, err);
        if (rc < 0) return -1;
        added += rc;
    }
    return added;
}

static int write_group(struct brm_journal_job *job, struct brm_store *st, struct brm_err *err) {
    struct brm_journal_group *g = (struct brm_journal_group *)job;
    double now = brm_time_now();
    size_t stored;
    g->messages = 0;
    g->job.saved = 0;
    for (size_t i = 0; i < g->n; i++) {
        const struct brm_journal_entry *e = &g->entries[i];
        struct brm_body b = { .id = e->id,
                              .source = e->source,
                              .topic = e->topic,
                              .received = e->received,
                              .events = e->events,
                              .body = e->body,
                              .len = e->len,
                              .runs = e->runs,
                              .runs_len = e->runs_len,
                              .digest = e->digest,
                              .backfilled = e->backfilled };
        if (e->held == BRM_JOURNAL_HOLD) {
            b.runs = NULL;
            b.runs_len = 0;
            if (brm_store_add_body(st, &b, &stored, err) < 0 || brm_store_hold(st, e->id, err) < 0)
                return -1;
            g->job.saved += e->len - stored;
            continue;
        }
        if (e->held == BRM_JOURNAL_RELEASE) {
            int kept = brm_store_release_held(st, e->id, e->runs, e->runs_len, err);
            if (kept < 0) return -1;
            if (!kept) g->job.saved += e->runs_len; /* the ring took its body meanwhile */
        }
        if (e->body && e->held != BRM_JOURNAL_RELEASE) {
            if (brm_store_add_body(st, &b, &stored, err) < 0) return -1;
            g->job.saved += e->len - stored;
        }
        int added = brm_journal_add_deliveries(g->cfg, st, e->actions, now, err);
        if (added < 0) return -1;
        g->messages += (size_t)added;
    }
    return g->txn ? brm_state_save(g->txn, st, err) : 0;
}

void brm_journal_group_init(struct brm_journal_group *g, int durable) {
    g->job.write = write_group;
    g->job.durable = durable;
    g->job.lingers = 0;
    g->job.bytes = 0;
    g->job.saved = 0;
    g->job.rows = 0;
    g->job.last_id = 0;
    for (size_t i = 0; i < g->n; i++) {
        /* A timer's firing has an id too (its messages' keys start with it):
         * ids must not start again below it after a restart. */
        if (g->entries[i].id > g->job.last_id) g->job.last_id = g->entries[i].id;
        const struct brm_journal_entry *e = &g->entries[i];
        if (e->held == BRM_JOURNAL_RELEASE) { /* its row is there: its runs come now */
            g->job.bytes += e->runs_len;
            continue;
        }
        if (!e->body) continue;                               /* a timer's: its deliveries only */
        g->job.bytes += e->len + (e->held ? 0 : e->runs_len); /* as the ring counts */
        g->job.rows++;
    }
}

/* ---- transactions (the writer's thread) ----------------------------------- */

/* The writer's schedule runs on the monotonic clock, in seconds: a wall
 * clock set back would hold upkeep, and bodies lingering, for as long. */
static double mono_now(void) {
    return (double)brm_time_mono_ns() / 1e9;
}

/* Records how long a write the writer made took, since BEGAN: in H, and
 * when it took SLOW_WRITE or more, in a line of the log (once a second at
 * most), so that an operator sees a disk that holds every durable answer
 * up. */
static void took(struct brm_journal *j, struct brm_histogram *h, const char *what, double began,
                 const char *unit, size_t count) {
    double now = mono_now(), seconds = now - began;
    brm_histogram_observe(h, seconds);
    if (seconds < SLOW_WRITE || now - j->slow_logged < 1) return;
    char ms[32], n[32];
    snprintf(ms, sizeof(ms), "%.0f", seconds * 1000);
    snprintf(n, sizeof(n), "%zu", count);
    brm_log_warn("the store was slow", "write", what, "ms", ms, unit, n);
    j->slow_logged = now;
}

/* Settings of the ring, read under the lock. */
static void ring_settings(struct brm_journal *j, double *retention, uint64_t *max_bytes) {
    pthread_mutex_lock(&j->lock);
    *retention = j->retention;
    *max_bytes = j->max_bytes;
    pthread_mutex_unlock(&j->lock);
}

/*
 * Removes the oldest bodies the ring's rules say must go, in steps, inside
 * the open transaction: while over the size cap (at most PRUNE_STEPS steps,
 * so that a transaction stays short; the next one goes on), or one step for
 * retention when AGED (when it was full, the writer goes on between
 * transactions, as it does over the cap). P carries the journal's size in
 * and out.
 */
static long prune(struct brm_journal *j, struct brm_prune *p, int aged, int steps,
                  struct brm_err *err) {
    double retention;
    long removed = 0;
    ring_settings(j, &retention, &p->max_bytes);
    p->after = j->pruned_upto;
    p->before = aged ? brm_time_now() - retention : 0;
    p->limit = PRUNE_STEP;
    for (int step = 0; step < steps; step++) {
        int over = p->max_bytes && p->bytes > p->max_bytes;
        if (!over && !(aged && step == 0)) break;
        if (brm_store_prune_bodies(j->store, p, err) < 0) return -1;
        removed += p->removed;
        if (aged && step == 0) j->aging = p->removed >= p->limit && !p->exhausted;
        if (p->exhausted || p->removed == 0) break;
    }
    return removed;
}

static int set_synced(struct brm_journal *j, int durable, struct brm_err *err) {
    if (durable == j->synced) return 0;
    if (brm_store_relax(j->store, !durable, err) < 0) return -1;
    j->synced = durable;
    return 0;
}

/* Writes JOBS (a list of N) in one transaction, with the ring's upkeep and
 * the journal's size. Returns 0, or -1 with ERR set and nothing stored. */
static int commit_jobs(struct brm_journal *j, struct brm_journal_job *jobs, size_t n, int aged,
                       int steps, struct brm_err *err) {
    struct brm_journal_stats before;
    brm_journal_stats(j, &before);
    struct brm_prune p = { .bytes = before.bytes, .rows = before.rows };
    /* Upkeep while the store is failing writes more than the bodies that
     * failed (and takes it out again), and waits for the fsync, as they
     * would: when that succeeds the store is back, even if no body comes to
     * show it (a load balancer that believes /healthz sends none). */
    int probe = n == 0 && !before.ok;
    int durable = probe;
    uint64_t added = 0;
    size_t bodies = 0;
    int64_t last = j->last_body;
    struct brm_journal_job *job = jobs;
    for (size_t i = 0; i < n; i++, job = job->next) {
        durable |= job->durable;
        added += job->bytes;
        p.bytes += job->bytes;
        p.rows += job->rows;
        bodies += (size_t)job->rows;
        if (job->last_id > last) last = job->last_id;
    }
    double began = mono_now();
    if (set_synced(j, durable, err) < 0 || brm_store_begin(j->store, err) < 0) return -1;
    job = jobs;
    for (size_t i = 0; i < n; i++, job = job->next) {
        if (job->write(job, j->store, err) < 0) goto fail;
        p.bytes -= job->saved; /* the ring counts what is stored */
        added -= job->saved;
    }
    long removed = prune(j, &p, aged, steps, err);
    if (removed < 0 || (probe && brm_store_probe(j->store, j->probe_bytes, err) < 0)) goto fail;
    if (n == 0 && removed == 0 && !probe) { /* upkeep that found nothing to do */
        brm_store_rollback(j->store);
        return 0;
    }
    if ((last != j->last_body && brm_store_set_meta(j->store, "last_body", last, err) < 0) ||
        brm_store_set_meta(j->store, "journal_bytes", (int64_t)p.bytes, err) < 0 ||
        brm_store_set_meta(j->store, "journal_rows", p.rows, err) < 0)
        goto fail;
    if (brm_store_commit(j->store, err) < 0) goto failed;
    took(j, j->commit_seconds, probe ? "probe" : "commit", began, "bodies", bodies);
    j->last_body = last;
    j->pruned_upto = p.after;
    j->pruned += removed;
    pthread_mutex_lock(&j->lock);
    j->stats.bytes = p.bytes;
    j->stats.rows = p.rows;
    pthread_mutex_unlock(&j->lock);
    return 0;
fail:
    brm_store_rollback(j->store);
failed:
    /* Their deliveries and state were stored with them, and a full store
     * must have room for more than one group: four times their bodies. */
    if (n)
        j->probe_bytes = added * 4 < PROBE_MIN   ? PROBE_MIN
                         : added * 4 > PROBE_MAX ? PROBE_MAX
                                                 : added * 4;
    return -1;
}

static void set_ok(struct brm_journal *j, int ok, const struct brm_err *err) {
    pthread_mutex_lock(&j->lock);
    j->stats.ok = ok;
    pthread_mutex_unlock(&j->lock);
    if (ok) return;
    /* A full disk fails every transaction: a line a second. */
    uint64_t now = brm_time_mono_ms();
    if (now - j->failure_logged >= 1000) {
        brm_log_error("the store refused a transaction", "error", err->msg);
        j->failure_logged = now;
    }
}

/* A transaction that failed says the store is failing; one that stored
 * bodies (or upkeep's probe) that it is not: the outbox's small updates of
 * rows it has say nothing of room for bodies. */
static void outcome(struct brm_journal *j, int ok, int64_t rows, const struct brm_err *err) {
    if (!ok || rows > 0) set_ok(j, ok, err);
}

/* Writes a batch of jobs. When the batch fails, each job is tried alone, so
 * that one job the store refuses does not take the others down with it. */
static void write_batch(struct brm_journal *j, struct brm_journal_job *jobs, int aged) {
    struct brm_err err;
    size_t n = 0;
    int64_t rows = 0;
    for (struct brm_journal_job *x = jobs; x; x = x->next) n++, rows += x->rows;
    int rc = commit_jobs(j, jobs, n, aged, PRUNE_STEPS, &err);
    outcome(j, rc == 0, rows, &err);
    if (rc < 0 && n > 1) {
        for (struct brm_journal_job *x = jobs, *next; x; x = next) {
            next = x->next;
            int one = commit_jobs(j, x, 1, 0, PRUNE_STEPS, &err);
            outcome(j, one == 0, x->rows, &err);
            x->done(x, one == 0, &err);
        }
        return;
    }
    for (struct brm_journal_job *x = jobs, *next; x; x = next) {
        next = x->next; /* done may free it */
        x->done(x, rc == 0, &err);
    }
}

/* Says how many bodies the ring removed: at once when nothing comes in
 * (retention, a smaller cap after a reload), else once a minute. */
static void log_pruned(struct brm_journal *j, int idle) {
    double now = brm_time_now();
    if (!j->pruned || (!idle && now - j->pruned_logged < 60)) return;
    char n[32];
    snprintf(n, sizeof(n), "%ld", j->pruned);
    brm_log_info("journal pruned", "bodies", n);
    j->pruned = 0;
    j->pruned_logged = now;
}

/* 1 when the journal holds more than its cap (and the store takes writes):
 * the writer prunes between transactions, one short step at a time, until
 * it does not. The caller holds the lock. */
static int over_locked(const struct brm_journal *j) {
    return j->max_bytes && j->stats.bytes > j->max_bytes && j->stats.ok;
}

static int over_cap(struct brm_journal *j) {
    pthread_mutex_lock(&j->lock);
    int over = over_locked(j);
    pthread_mutex_unlock(&j->lock);
    return over;
}

/*
 * Done deliveries older than the journal's retention that the ring did not
 * remove with a body: a timer's firing has none, and one done after its
 * body went was not done when the ring looked. A done one counts from its
 * last attempt. A few steps a second go on from where the last stopped;
 * the pending and dead ones it passes over (and one retried and done
 * lately) stay behind, so once an hour it starts again from the oldest.
 */
static int sweep_done(struct brm_journal *j, double now, struct brm_err *err) {
    double retention;
    uint64_t cap;
    ring_settings(j, &retention, &cap);
    if (now - j->swept_from >= SWEEP_AGAIN || now < j->swept_from) {
        j->swept = 0;
        j->swept_from = now;
    }
    for (int i = 0; i < SWEEP_STEPS; i++) {
        long passed =
            brm_store_sweep_done(j->store, &j->swept, now - retention, now, SWEEP_STEP, err);
        if (passed < 0) return -1;
        if (passed < SWEEP_STEP) break;
    }
    return 0;
}

/* Upkeep: a step of the ring when it is over its cap; when DUE (about once
 * a second) its retention, the sweep of old done deliveries and the
 * caller's hook; a checkpoint when the WAL has grown. */
static void upkeep(struct brm_journal *j, int due, int idle) {
    struct brm_err err;
    if (due || j->aging || over_cap(j)) {
        struct brm_journal_stats was;
        brm_journal_stats(j, &was);
        if (commit_jobs(j, NULL, 0, due || j->aging, 1, &err) < 0) {
            j->aging = 0; /* tried again at the next upkeep */
            /* A failing store's probe failed: set_ok says so, once a second. */
            if (was.ok) brm_log_warn("cannot prune the journal", "error", err.msg);
            set_ok(j, 0, &err); /* no step after step on a failing disk: once a second */
        } else {
            set_ok(j, 1, &err); /* it wrote, if the store was failing */
        }
    }
    if (due) {
        log_pruned(j, idle);
        double now = brm_time_now();
        int64_t swept = j->swept;
        double swept_from = j->swept_from;
        struct brm_journal_stats st;
        brm_journal_stats(j, &st); /* a failing store says so once a second already */
        if (st.ok && (brm_store_begin(j->store, &err) < 0 || sweep_done(j, now, &err) < 0 ||
                      brm_store_commit(j->store, &err) < 0)) {
            brm_store_rollback(j->store);
            j->swept = swept; /* what it removed is there again */
            j->swept_from = swept_from;
            brm_log_warn("cannot sweep done deliveries", "error", err.msg);
        }
        if (j->upkeep && (brm_store_begin(j->store, &err) < 0 ||
                          j->upkeep(j->upkeep_arg, j->store, now, &err) < 0 ||
                          brm_store_commit(j->store, &err) < 0)) {
            brm_store_rollback(j->store);
            brm_log_warn("store upkeep failed", "error", err.msg);
        }
    }
    /* A WAL of a quarter of the journal's cap (64 pages at least, 1 MB at
     * most) is copied back: the files stay near the cap, and a checkpoint
     * is short. It runs on the workers' core when brume has one: copying
     * 4 MB at a time put the light path's p99 at 16 ms (10-event bodies),
     * 1 MB at 9 to 12 ms, for the same throughput; 256 KB slowed durable
     * commits. */
    double retention;
    uint64_t cap;
    ring_settings(j, &retention, &cap);
    uint64_t frames = cap ? cap / 4 / 4096 : CHECKPOINT_FRAMES;
    frames = frames < 64 ? 64 : frames > CHECKPOINT_FRAMES ? CHECKPOINT_FRAMES : frames;
    int pages = brm_store_wal_frames(j->store);
    if ((uint64_t)pages < frames) return;
    double began = mono_now();
    if (brm_store_checkpoint(j->store, &err) < 0)
        brm_log_warn("cannot checkpoint the store", "error", err.msg);
    else
        took(j, j->checkpoint_seconds, "checkpoint", began, "pages", (size_t)pages);
}

/* Waits on the writer's condition (on the monotonic clock) until WHEN at
 * most, or a signal. The caller holds the lock. */
static void wait_until(struct brm_journal *j, double when) {
    if (when <= mono_now()) return;
    time_t secs = (time_t)when; /* mono_now counts CLOCK_MONOTONIC's seconds */
    struct timespec until = { secs, (long)((when - (double)secs) * 1e9) };
    pthread_cond_timedwait(&j->wake, &j->lock, &until);
}

static void *writer_main(void *arg) {
    struct brm_journal *j = arg;
    brm_thread_name("writer");
    brm_metrics_set_slot(j->slot);
    pthread_mutex_lock(&j->lock);
    for (;;) {
        while (!j->queue && !j->stopping) {
            if (mono_now() >= j->next_upkeep || j->aging || over_locked(j)) break;
            wait_until(j, j->next_upkeep);
        }
        /* Jobs that nobody waits for (durability = "none" bodies, answered
         * already) wait a little for others to share their transaction:
         * a commit costs the same for one body or fifty. */
        j->lingering = 1;
        while (j->queue && !j->urgent && !j->stopping && mono_now() < j->written + LINGER)
            wait_until(j, j->written + LINGER);
        j->lingering = 0;
        struct brm_journal_job *jobs = j->queue;
        int stop = j->stopping;
        j->queue = NULL;
        j->tail = &j->queue;
        j->urgent = 0;
        pthread_mutex_unlock(&j->lock);
        double t = mono_now();
        int due = t >= j->next_upkeep;
        if (due) j->next_upkeep = t + UPKEEP_INTERVAL;
        if (jobs) {
            write_batch(j, jobs, 0);
            j->written = mono_now();
        }
        upkeep(j, due && !stop, !jobs);
        pthread_mutex_lock(&j->lock);
        if (stop && !j->queue) break;
    }
    j->running = 0;
    pthread_mutex_unlock(&j->lock);
    return NULL;
}

/* ---- life --------------------------------------------------------------- */

struct brm_journal *brm_journal_new(const char *path, const struct brm_config *cfg,
                                    brm_journal_upkeep_fn *fn, void *arg, struct brm_err *err) {
    struct brm_journal *j = brm_xcalloc(1, sizeof(*j));
    pthread_mutex_init(&j->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&j->wake, &attr);
    pthread_condattr_destroy(&attr);
    j->tail = &j->queue;
    j->upkeep = fn;
    j->upkeep_arg = arg;
    j->synced = 1;
    j->stats.ok = 1;
    j->probe_bytes = PROBE_MIN;
    j->slot = cfg->workers + 2; /* after the main thread, the workers and the outbox */
    j->commit_seconds = brm_metrics_histogram(
        "brume_journal_commit_seconds",
        "The journal writer's transactions, from BEGIN to the end of COMMIT (its fsync).", NULL);
    j->checkpoint_seconds = brm_metrics_histogram(
        "brume_journal_checkpoint_seconds",
        "The journal writer's checkpoints: WAL pages copied back into the database.", NULL);
    brm_journal_configure(j, cfg);
    j->store = brm_store_open(path, err);
    /* A size read as 0 would be saved with the next body: the ring would
     * hold what it held, past its cap, for good. */
    int64_t bytes = 0;
    if (!j->store || brm_store_limit(j->store, cfg->store_max, err) < 0 ||
        brm_store_own_checkpoints(j->store, WAL_LIMIT, err) < 0 ||
        (j->last_body = brm_store_meta(j->store, "last_body", err)) < 0 ||
        (bytes = brm_store_meta(j->store, "journal_bytes", err)) < 0 ||
        (j->stats.rows = brm_store_meta(j->store, "journal_rows", err)) < 0) {
        brm_journal_free(j);
        return NULL;
    }
    j->stats.bytes = (uint64_t)bytes;
    j->next_upkeep = mono_now(); /* prune what retention says at once */
    return j;
}

int brm_journal_run(struct brm_journal *j, struct brm_err *err) {
    j->running = 1;
    int rc = pthread_create(&j->thread, NULL, writer_main, j);
    if (rc != 0) {
        j->running = 0;
        brm_err_set(err, "cannot start the journal's writer: %s", strerror(rc));
        return -1;
    }
    j->started = 1;
    return 0;
}

void brm_journal_submit(struct brm_journal *j, struct brm_journal_job *job) {
    job->next = NULL;
    pthread_mutex_lock(&j->lock);
    if (!j->running) {
        pthread_mutex_unlock(&j->lock);
        struct brm_err err;
        brm_err_set(&err, "the journal is stopped");
        job->done(job, 0, &err);
        return;
    }
    *j->tail = job;
    j->tail = &job->next;
    j->urgent |= !job->lingers;
    if (!j->lingering || !job->lingers) pthread_cond_signal(&j->wake);
    pthread_mutex_unlock(&j->lock);
}

void brm_journal_configure(struct brm_journal *j, const struct brm_config *cfg) {
    pthread_mutex_lock(&j->lock);
    j->retention = cfg->journal.retention;
    j->max_bytes = cfg->journal.max_size;
    pthread_mutex_unlock(&j->lock);
}

void brm_journal_stats(struct brm_journal *j, struct brm_journal_stats *out) {
    pthread_mutex_lock(&j->lock);
    *out = j->stats;
    pthread_mutex_unlock(&j->lock);
}

void brm_journal_stop(struct brm_journal *j) {
    if (!j) return;
    pthread_mutex_lock(&j->lock);
    j->stopping = 1;
    pthread_cond_signal(&j->wake);
    pthread_mutex_unlock(&j->lock);
    if (j->started) pthread_join(j->thread, NULL);
    j->started = 0;
}

void brm_journal_free(struct brm_journal *j) {
    if (!j) return;
    brm_journal_stop(j);
    brm_store_close(j->store);
    pthread_cond_destroy(&j->wake);
    pthread_mutex_destroy(&j->lock);
    free(j);
}
