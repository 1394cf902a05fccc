/*
 * metrics: counters, gauges and histograms in Prometheus's text format.
 * A series (a name plus its labels) is created once, under a lock, and
 * kept by whoever counts into it; counting is then a plain add into the
 * calling thread's own cache line, with no lock and no shared write, and a
 * scrape sums the slots. Threads say which slot is theirs with
 * brm_metrics_set_slot. Depends on util.
 */
#ifndef BRM_METRICS_H
#define BRM_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct brm_counter;
struct brm_histogram;

/* Sets the number of thread slots; call before the first series. */
void brm_metrics_init(int nslots);
void brm_metrics_set_slot(int slot);

/* The counter NAME{labels}, created on first use. The variadic arguments
 * are label name, value pairs ending with NULL. Never fails. */
struct brm_counter *brm_metrics_counter(const char *name, const char *help, ...)
    __attribute__((sentinel));
void brm_counter_add(struct brm_counter *c, uint64_t n);
uint64_t brm_counter_value(const struct brm_counter *c);

/* A histogram of seconds with brume's fixed buckets (100µs .. 10s). */
struct brm_histogram *brm_metrics_histogram(const char *name, const char *help, ...)
    __attribute__((sentinel));
void brm_histogram_observe(struct brm_histogram *h, double seconds);

/* A gauge whose value FN(ARG) computes at scrape time; label pairs follow,
 * ending with NULL. */
void brm_metrics_gauge(const char *name, const char *help, double (*fn)(void *), void *arg, ...)
    __attribute__((sentinel));

/* Appends every series in the text exposition format. */
void brm_metrics_render(struct brm_buf *out);

/* Calls FN with every counter's name, labels (`a="x",b="y"`, or "") and
 * value, under the registry's lock: FN must not create a series. */
void brm_metrics_each_counter(void (*fn)(void *arg, const char *name, const char *labels,
                                         uint64_t value),
                              void *arg);

#endif
