#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define SLOT_BYTES 64 /* one cache line: slots of two threads never share one */

static const double bucket_bounds[] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                        0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10 };
#define NBUCKETS (BRM_ARRAY_LEN(bucket_bounds) + 1) /* +Inf */

enum kind { COUNTER, HISTOGRAM, GAUGE };

/* Per slot: a counter uses v[0]; a histogram v[0..NBUCKETS-1] and sum_us. */
struct slot {
    _Atomic uint64_t v[NBUCKETS];
    _Atomic uint64_t sum_ns;
};

struct series {
    struct series *next;
    enum kind kind;
    char *name, *help, *labels; /* labels: `a="x",b="y"` or "" */
    struct slot *slots;
    double (*fn)(void *);
    void *arg;
};

struct brm_counter {
    struct series s;
};
struct brm_histogram {
    struct series s;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct series *all;
static int nslots = 1;
static _Thread_local int my_slot;

void brm_metrics_init(int n) {
    pthread_mutex_lock(&lock);
    if (!all && n > 0) nslots = n;
    pthread_mutex_unlock(&lock);
}

void brm_metrics_set_slot(int slot) {
    my_slot = slot < nslots ? slot : 0;
}

static size_t slot_size(void) {
    return (sizeof(struct slot) + SLOT_BYTES - 1) / SLOT_BYTES * SLOT_BYTES;
}

static struct slot *slot_of(struct series *s, int i) {
    return (struct slot *)((char *)s->slots + (size_t)i * slot_size());
}

static char *format_labels(va_list ap) {
    struct brm_buf b;
    brm_buf_init(&b);
    brm_buf_puts(&b, "");
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k) break;
        const char *v = va_arg(ap, const char *);
        if (b.len) brm_buf_puts(&b, ",");
        brm_buf_printf(&b, "%s=\"", k);
        for (const char *p = v; *p; p++) {
            if (*p == '"' || *p == '\\')
                brm_buf_printf(&b, "\\%c", *p);
            else if (*p == '\n')
                brm_buf_puts(&b, "\\n");
            else
                brm_buf_append(&b, p, 1);
        }
        brm_buf_puts(&b, "\"");
    }
    return b.data;
}

static struct series *get_series(enum kind kind, const char *name, const char *help, char *labels) {
    pthread_mutex_lock(&lock);
    struct series *s;
    for (s = all; s; s = s->next)
        if (strcmp(s->name, name) == 0 && strcmp(s->labels, labels) == 0) break;
    if (!s) {
        s = brm_xcalloc(1, kind == COUNTER ? sizeof(struct brm_counter)
                                           : sizeof(struct brm_histogram));
        s->kind = kind;
        s->name = brm_xstrdup(name);
        s->help = brm_xstrdup(help);
        s->labels = labels;
        labels = NULL;
        size_t bytes = (size_t)nslots * slot_size();
        s->slots = aligned_alloc(SLOT_BYTES, bytes);
        if (!s->slots) s->slots = brm_xmalloc(bytes);
        memset(s->slots, 0, bytes);
        s->next = all;
        all = s;
    }
    pthread_mutex_unlock(&lock);
    free(labels);
    return s;
}

struct brm_counter *brm_metrics_counter(const char *name, const char *help, ...) {
    va_list ap;
    va_start(ap, help);
    char *labels = format_labels(ap);
    va_end(ap);
    return (struct brm_counter *)get_series(COUNTER, name, help, labels);
}

struct brm_histogram *brm_metrics_histogram(const char *name, const char *help, ...) {
    va_list ap;
    va_start(ap, help);
    char *labels = format_labels(ap);
    va_end(ap);
    return (struct brm_histogram *)get_series(HISTOGRAM, name, help, labels);
}

void brm_metrics_gauge(const char *name, const char *help, double (*fn)(void *), void *arg, ...) {
    va_list ap;
    va_start(ap, arg);
    char *labels = format_labels(ap);
    va_end(ap);
    struct series *s = get_series(GAUGE, name, help, labels);
    pthread_mutex_lock(&lock);
    s->fn = fn;
    s->arg = arg;
    pthread_mutex_unlock(&lock);
}

/* Only this thread writes its slot, so load + store is enough: no locked
 * instruction on the hot path, and a scrape still reads whole values. */
static void bump(_Atomic uint64_t *v, uint64_t n) {
    atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

void brm_counter_add(struct brm_counter *c, uint64_t n) {
    bump(&slot_of(&c->s, my_slot)->v[0], n);
}

uint64_t brm_counter_value(const struct brm_counter *c) {
    uint64_t sum = 0;
    for (int i = 0; i < nslots; i++)
        sum +=
            atomic_load_explicit(&slot_of((struct series *)&c->s, i)->v[0], memory_order_relaxed);
    return sum;
}

void brm_histogram_observe(struct brm_histogram *h, double seconds) {
    struct slot *sl = slot_of(&h->s, my_slot);
    size_t b = 0;
    while (b < BRM_ARRAY_LEN(bucket_bounds) && seconds > bucket_bounds[b]) b++;
    bump(&sl->v[b], 1);
    bump(&sl->sum_ns, seconds > 0 ? (uint64_t)(seconds * 1e9) : 0);
}

static int by_name(const void *a, const void *b) {
    const struct series *x = *(const struct series *const *)a,
                        *y = *(const struct series *const *)b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->labels, y->labels);
}

static void render_histogram(struct brm_buf *out, struct series *s) {
    uint64_t counts[NBUCKETS] = { 0 }, sum_ns = 0, cum = 0;
    for (int i = 0; i < nslots; i++) {
        struct slot *sl = slot_of(s, i);
        for (size_t b = 0; b < NBUCKETS; b++)
            counts[b] += atomic_load_explicit(&sl->v[b], memory_order_relaxed);
        sum_ns += atomic_load_explicit(&sl->sum_ns, memory_order_relaxed);
    }
    const char *sep = s->labels[0] ? "," : "";
    for (size_t b = 0; b < NBUCKETS; b++) {
        cum += counts[b];
        if (b < BRM_ARRAY_LEN(bucket_bounds))
            brm_buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", s->name, s->labels, sep,
                           bucket_bounds[b], (unsigned long long)cum);
        else
            brm_buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", s->name, s->labels, sep,
                           (unsigned long long)cum);
    }
    const char *open = s->labels[0] ? "{" : "", *close = s->labels[0] ? "}" : "";
    brm_buf_printf(out, "%s_sum%s%s%s %.9f\n", s->name, open, s->labels, close,
                   (double)sum_ns / 1e9);
    brm_buf_printf(out, "%s_count%s%s%s %llu\n", s->name, open, s->labels, close,
                   (unsigned long long)cum);
}

void brm_metrics_render(struct brm_buf *out) {
    static const char *const types[] = { "counter", "histogram", "gauge" };
    pthread_mutex_lock(&lock);
    size_t n = 0;
    for (struct series *s = all; s; s = s->next) n++;
    struct series **v = brm_xmalloc(n * sizeof(*v));
    n = 0;
    for (struct series *s = all; s; s = s->next) v[n++] = s;
    qsort(v, n, sizeof(*v), by_name);
    for (size_t i = 0; i < n; i++) {
        struct series *s = v[i];
        if (i == 0 || strcmp(v[i - 1]->name, s->name) != 0)
            brm_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", s->name, s->help, s->name,
                           types[s->kind]);
        const char *open = s->labels[0] ? "{" : "", *close = s->labels[0] ? "}" : "";
        if (s->kind == COUNTER)
            brm_buf_printf(out, "%s%s%s%s %llu\n", s->name, open, s->labels, close,
                           (unsigned long long)brm_counter_value((struct brm_counter *)s));
        else if (s->kind == GAUGE)
            brm_buf_printf(out, "%s%s%s%s %.17g\n", s->name, open, s->labels, close,
                           s->fn ? s->fn(s->arg) : 0.0);
        else
            render_histogram(out, s);
    }
    free(v);
    pthread_mutex_unlock(&lock);
}

void brm_metrics_each_counter(void (*fn)(void *arg, const char *name, const char *labels,
                                         uint64_t value),
                              void *arg) {
    pthread_mutex_lock(&lock);
    for (struct series *s = all; s; s = s->next)
        if (s->kind == COUNTER)
            fn(arg, s->name, s->labels, brm_counter_value((struct brm_counter *)s));
    pthread_mutex_unlock(&lock);
}
