#include "transfer.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct brm_transfers {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    struct brm_transfer *list; /* in flight */
};

struct brm_transfer {
    struct brm_transfers *t;
    struct brm_transfer *prev, *next;
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    struct brm_buf answer;
    double retry_after;
    char errbuf[CURL_ERROR_SIZE];
    brm_transfer_done_fn *done;
    void *arg;
};

struct sock {
    struct event *ev;
    struct brm_transfers *t;
};

static void check_done(struct brm_transfers *t);

static void on_socket(evutil_socket_t fd, short what, void *arg) {
    struct brm_transfers *t = arg;
    int running;
    int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(t->multi, fd, flags, &running);
    check_done(t);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    struct brm_transfers *t = arg;
    int running;
    (void)fd, (void)what;
    curl_multi_socket_action(t->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(t);
}

static int socket_cb(CURL *e, curl_socket_t s, int what, void *arg, void *sockp) {
    struct brm_transfers *t = arg;
    struct sock *sk = sockp;
    (void)e;
    if (what == CURL_POLL_REMOVE) {
        if (sk) {
            event_free(sk->ev);
            free(sk);
        }
        return 0;
    }
    if (!sk) {
        sk = brm_xcalloc(1, sizeof(*sk));
        sk->t = t;
        curl_multi_assign(t->multi, s, sk);
    } else {
        event_free(sk->ev);
    }
    short events =
        EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    sk->ev = event_new(t->base, s, events, on_socket, t);
    event_add(sk->ev, NULL);
    return 0;
}

static int timer_cb(CURLM *multi, long ms, void *arg) {
    struct brm_transfers *t = arg;
    (void)multi;
    if (ms < 0) {
        evtimer_del(t->timer);
    } else {
        struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
        evtimer_add(t->timer, &tv);
    }
    return 0;
}

struct brm_transfers *brm_transfers_new(struct event_base *base) {
    struct brm_transfers *t = brm_xcalloc(1, sizeof(*t));
    t->base = base;
    t->timer = evtimer_new(base, on_timer, t);
    t->multi = curl_multi_init();
    if (!t->multi) {
        fprintf(stderr, "brume: cannot start libcurl\n");
        abort();
    }
    curl_multi_setopt(t->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(t->multi, CURLMOPT_SOCKETDATA, t);
    curl_multi_setopt(t->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(t->multi, CURLMOPT_TIMERDATA, t);
    return t;
}

static void transfer_free(struct brm_transfer *x) {
    struct brm_transfers *t = x->t;
    if (x->prev)
        x->prev->next = x->next;
    else
        t->list = x->next;
    if (x->next) x->next->prev = x->prev;
    curl_multi_remove_handle(t->multi, x->easy);
    curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->headers);
    free(x->body);
    brm_buf_reset(&x->answer);
    free(x);
}

void brm_transfer_cancel(struct brm_transfer *x) {
    if (x) transfer_free(x);
}

void brm_transfers_free(struct brm_transfers *t) {
    if (!t) return;
    while (t->list) transfer_free(t->list);
    curl_multi_cleanup(t->multi); /* removes its sockets: their events go */
    event_free(t->timer);
    free(t);
}

static size_t on_body(char *data, size_t size, size_t n, void *arg) {
    struct brm_transfer *x = arg;
    size_t len = size * n, room = BRM_TRANSFER_MAX_ANSWER - x->answer.len;
    if (x->answer.len < BRM_TRANSFER_MAX_ANSWER)
        brm_buf_append(&x->answer, data, len < room ? len : room);
    return len;
}

double brm_transfer_retry_after(const char *line, size_t len) {
    static const char name[] = "retry-after:";
    if (len <= sizeof(name) || strncasecmp(line, name, sizeof(name) - 1) != 0) return 0;
    char v[64];
    snprintf(v, sizeof(v), "%.*s", (int)(len - sizeof(name) + 1), line + sizeof(name) - 1);
    char *end;
    double secs = strtod(v, &end);
    if (end == v) {
        time_t when = curl_getdate(v, NULL);
        secs = when > 0 ? (double)when - brm_time_now() : 0;
    }
    return secs > 0 ? secs : 0;
}

static size_t on_header(char *data, size_t size, size_t n, void *arg) {
    struct brm_transfer *x = arg;
    size_t len = size * n;
    double secs = brm_transfer_retry_after(data, len);
    if (secs > 0) x->retry_after = fmin(secs, 86400);
    return len;
}

static void set_request(CURL *e, struct brm_transfer *x, const struct brm_transfer_request *r) {
    curl_easy_setopt(e, CURLOPT_URL, r->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(r->timeout * 1000));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(fmin(r->timeout, 10) * 1000));
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "brume/" BRM_VERSION);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    if (r->proxy) curl_easy_setopt(e, CURLOPT_PROXY, r->proxy);
    if (strcmp(r->method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        x->body = brm_xstrndup(r->body ? r->body : "", r->body ? r->body_len : 0);
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(r->body ? r->body_len : 0));
    }
    for (size_t i = 0; i < r->nheaders; i++)
        x->headers = curl_slist_append(x->headers, r->headers[i]);
    x->headers = curl_slist_append(x->headers, "Expect:");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
}

struct brm_transfer *brm_transfer_start(struct brm_transfers *t,
                                        const struct brm_transfer_request *req,
                                        brm_transfer_done_fn *done, void *arg) {
    CURL *e = curl_easy_init();
    if (!e) return NULL;
    struct brm_transfer *x = brm_xcalloc(1, sizeof(*x));
    x->t = t;
    x->easy = e;
    x->done = done;
    x->arg = arg;
    brm_buf_init(&x->answer);
    set_request(e, x, req);
    x->next = t->list;
    if (t->list) t->list->prev = x;
    t->list = x;
    if (curl_multi_add_handle(t->multi, e) != CURLM_OK) {
        transfer_free(x);
        return NULL;
    }
    return x;
}

/* A failure retrying will not mend: it is in the config. */
static int is_config_error(CURLcode rc) {
    switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE: return 1;
    default: return 0;
    }
}

static void finish(struct brm_transfer *x, CURLcode rc) {
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    brm_buf_puts(&x->answer, ""); /* NUL-terminated, even when empty */
    struct brm_transfer_result r = {
        .status = (int)status,
        .failed = rc != CURLE_OK,
        .config_error = is_config_error(rc),
        .error = rc == CURLE_OK ? NULL
                 : x->errbuf[0] ? x->errbuf
                                : curl_easy_strerror(rc),
        .answer = x->answer.data,
        .answer_len = x->answer.len,
        .retry_after = x->retry_after,
    };
    x->done(x->arg, &r);
    transfer_free(x);
}

static void check_done(struct brm_transfers *t) {
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(t->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        struct brm_transfer *x;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        finish(x, msg->data.result);
    }
}
