#include "journal.h"

#include <stdatomic.h>

#include "outbox.h"

static _Atomic int64_t next_id = 1;

void brm_journal_start(int64_t last) {
    atomic_store(&next_id, last + 1);
}

int64_t brm_journal_next_id(void) {
    return atomic_fetch_add(&next_id, 1);
}

int brm_journal_commit(struct brm_store *st, const struct brm_config *cfg, struct brm_state *state,
                       const struct brm_journal_entry *e, size_t n, struct brm_err *err) {
    double now = brm_time_now();
    if (brm_store_begin(st, err) < 0) return -1;
    for (size_t i = 0; i < n; i++) {
        struct brm_body b = {
            .id = e[i].id,
            .source = e[i].source,
            .topic = e[i].topic,
            .received = e[i].received,
            .events = e[i].events,
            .body = e[i].body,
            .len = e[i].len,
        };
        if (brm_store_add_body(st, &b, err) < 0 ||
            brm_outbox_add(cfg, st, e[i].actions, now, err) < 0 ||
            (state && brm_state_save(state, st, &e[i].actions->state, err) < 0)) {
            brm_store_rollback(st);
            return -1;
        }
    }
    return brm_store_commit(st, err);
}

long brm_journal_prune(struct brm_store *st, const struct brm_config *cfg, double now,
                       struct brm_err *err) {
    long total = 0, removed;
    do {
        if (brm_store_prune_journal(st, now - cfg->journal.retention, cfg->journal.max_size,
                                    &removed, err) < 0)
            return -1;
        total += removed;
    } while (removed >= 1000);
    return total;
}
