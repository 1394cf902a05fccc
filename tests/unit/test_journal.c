/*
 * journal: jobs that nobody waits for (durability = "none" groups) share a
 * transaction with what comes in the next few milliseconds; a job someone
 * waits for is written at once, with any that lingered; a stop writes what
 * lingers. The order of the writer's calls shows which jobs shared a
 * transaction: every write of a transaction comes before its dones. Its
 * upkeep sweeps done deliveries older than the retention that no body
 * takes with it (a timer's firing's).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "api.h"
#include "config.h"
#include "journal.h"
#include "store.h"
#include "test.h"
#include "util.h"

struct job {
    struct brm_journal_job base; /* first */
    char name;
    int stored;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static char order[64];
static size_t norder;
static int ndone;

static void note(char c) {
    if (norder + 1 < sizeof(order)) order[norder++] = c;
    order[norder] = '\0';
}

static int job_write(struct brm_journal_job *job, struct brm_store *st, struct brm_err *err) {
    (void)st, (void)err;
    pthread_mutex_lock(&lock);
    note(((struct job *)job)->name);
    pthread_mutex_unlock(&lock);
    return 0;
}

static void job_done(struct brm_journal_job *job, int stored, const struct brm_err *err) {
    (void)err;
    pthread_mutex_lock(&lock);
    note('.');
    ((struct job *)job)->stored = stored;
    ndone++;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
}

static struct job make(char name, int lingers) {
    return (struct job){ .base = { .write = job_write, .done = job_done, .lingers = lingers },
                         .name = name };
}

/* Waits until N jobs in all are done; then forgets the order so far. */
static void wait_done(int n, char *out, size_t size) {
    pthread_mutex_lock(&lock);
    while (ndone < n) pthread_cond_wait(&cond, &lock);
    snprintf(out, size, "%s", order);
    norder = 0;
    order[0] = '\0';
    pthread_mutex_unlock(&lock);
}

/* Submits FIRST, then SECOND a millisecond later; waits until DONE jobs in
 * all are done, and OUT says in what order the writer took them. */
static void two_jobs(struct brm_journal *j, struct job *first, struct job *second, int done,
                     char *out, size_t size) {
    struct timespec ms = { 0, 1000000L };
    brm_journal_submit(j, &first->base);
    nanosleep(&ms, NULL);
    brm_journal_submit(j, &second->base);
    wait_done(done, out, size);
}

/* Keeps the smallest id of the deliveries listed (newest first). */
static int first_id(void *arg, const struct brm_delivery *d) {
    *(int64_t *)arg = d->id;
    return 0;
}

static int count_delivery(void *arg, const struct brm_delivery *d) {
    (void)d;
    ++*(int *)arg;
    return 0;
}

int main(void) {
    char dir[] = "/tmp/brume-journal-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char *conf = brm_path_join(dir, "brume.lua");
    FILE *f = fopen(conf, "w");
    fprintf(f,
            "data_dir = '%s'\nsources = { mist = { path = '/mist', secret = 'x' } }\n"
            "journal = { retention = '60s' }\n",
            dir);
    fclose(f);
    struct brm_errors errs = { 0 };
    struct brm_config *cfg = brm_config_load(conf, brm_api_open_for_config, NULL, &errs);
    for (size_t i = 0; i < errs.n; i++) fprintf(stderr, "  %s\n", errs.v[i].msg);
    brm_errors_reset(&errs);
    CHECK(cfg != NULL);
    char cmd[96];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (!cfg) {
        free(conf);
        CHECK_INT(system(cmd), 0);
        return test_done();
    }
    char *db = brm_path_join(dir, "brume.db");
    struct brm_err err;
    /* A timer's firing's delivery, done an hour ago, and one still pending. */
    struct brm_store *st = brm_store_open(db, &err);
    CHECK(st != NULL);
    int64_t done_id = 0;
    if (st) {
        char rule[] = "r", topic[] = "timer", event[] = "e", url[] = "http://x/";
        const char *keys[] = { "9:hold:fire:1", "10:hold:fire:1" };
        for (int i = 0; i < 2; i++) {
            struct brm_delivery d = { .key = keys[i],
                                      .target = "slack",
                                      .rule = rule,
                                      .topic = topic,
                                      .event = event,
                                      .url = url,
                                      .created = brm_time_now() - 3600,
                                      .expires = 1e12 };
            CHECK_INT(brm_store_add_delivery(st, &d, &err), 1);
        }
        struct brm_delivery_query q = { .state = -1, .limit = 10 };
        CHECK_INT(brm_store_find_deliveries(st, &q, first_id, &done_id, &err), 0);
        CHECK(done_id > 0);
        CHECK_INT(brm_store_finish(st, done_id, 0, 0, BRM_DELIVERY_DONE, 0, 200, NULL, &err), 0);
        brm_store_close(st);
    }
    struct brm_journal *j = brm_journal_new(db, cfg, NULL, NULL, &err);
    CHECK(j != NULL);
    CHECK_INT(brm_journal_run(j, &err), 0);
    char got[64];

    /* A job someone waits for is written at once. */
    struct job x = make('x', 0);
    brm_journal_submit(j, &x.base);
    wait_done(1, got, sizeof(got));
    CHECK_STR(got, "x.");
    CHECK(x.stored);

    /* Right after a commit, a job that lingers waits for the next one to
     * come (a millisecond later), and both go in one transaction. */
    struct job a = make('a', 1), b = make('b', 1);
    two_jobs(j, &a, &b, 3, got, sizeof(got));
    CHECK_STR(got, "ab..");

    /* One that someone waits for does not linger, and takes the lingering
     * ones with it. */
    struct job c = make('c', 1), u = make('u', 0);
    two_jobs(j, &c, &u, 5, got, sizeof(got));
    CHECK_STR(got, "cu..");

    /* A stop writes what lingers before it returns. */
    struct job d = make('d', 1);
    brm_journal_submit(j, &d.base);
    brm_journal_stop(j);
    wait_done(6, got, sizeof(got));
    CHECK_STR(got, "d.");
    CHECK(d.stored);
    brm_journal_free(j);
    /* The upkeep at start swept the old done one; the pending one stays. */
    st = brm_store_open(db, &err);
    CHECK(st != NULL);
    if (st) {
        int left = 0;
        struct brm_delivery_query q = { .state = -1, .limit = 10 };
        CHECK_INT(brm_store_find_deliveries(st, &q, count_delivery, &left, &err), 0);
        CHECK_INT(left, 1);
        CHECK_INT(brm_store_delivery(st, done_id, count_delivery, &left, &err), 0);
        brm_store_close(st);
    }
    brm_config_free(cfg);
    free(db);
    free(conf);
    CHECK_INT(system(cmd), 0);
    return test_done();
}
