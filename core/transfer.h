/*
 * transfer: outbound HTTP(S) requests on an event_base, with libcurl's
 * multi interface driven by libevent (no blocking call, no thread per
 * request): certificate verification on, http and https only, a target's
 * proxy or the usual environment variables, a timeout. The answer's status,
 * its first 64 KB and its Retry-After (seconds or an HTTP date) come back
 * to a callback. It knows nothing of deliveries or retries. Depends on
 * libcurl, libevent, util.
 */
#ifndef BRM_TRANSFER_H
#define BRM_TRANSFER_H

#include <stddef.h>

#include "util.h"

struct event_base;

#define BRM_TRANSFER_MAX_ANSWER (64 * 1024) /* kept of an answer */

struct brm_transfer_request {
    const char *method, *url;
    const char *body; /* may be NULL */
    size_t body_len;
    const char *const *headers; /* "Name: value" */
    size_t nheaders;
    const char *proxy; /* NULL: the environment's */
    double timeout;    /* seconds, for the whole transfer */
};

struct brm_transfer_result {
    int status;         /* HTTP status; 0 when no answer came */
    int failed;         /* a network error, a timeout, a TLS failure... */
    int config_error;   /* ...one that retrying will not mend (bad URL, protocol, certificate) */
    const char *error;  /* what failed, when FAILED */
    const char *answer; /* the answer's start, NUL-terminated */
    size_t answer_len;
    double retry_after; /* seconds the server asked to wait; 0: none */
};

/* Called once per transfer, on the base's thread; RESULT is borrowed. */
typedef void brm_transfer_done_fn(void *arg, const struct brm_transfer_result *result);

struct brm_transfers;
struct brm_transfer;

/* Transfers on BASE. */
struct brm_transfers *brm_transfers_new(struct event_base *base);
/* Cancels what is in flight (no callbacks) and frees. */
void brm_transfers_free(struct brm_transfers *t);

/* Starts REQ (copied), calling DONE(ARG) when it ends. Returns the
 * transfer, or NULL when it could not start (DONE is not called). */
struct brm_transfer *brm_transfer_start(struct brm_transfers *t,
                                        const struct brm_transfer_request *req,
                                        brm_transfer_done_fn *done, void *arg);
/* Stops a transfer in flight; DONE is not called. */
void brm_transfer_cancel(struct brm_transfer *x);

/* The wait a "Retry-After:" header line of LEN bytes asks for, in seconds
 * (a number, or an HTTP date from now; it may be infinite), or 0 when
 * LINE is another header or asks for none. */
double brm_transfer_retry_after(const char *line, size_t len);

#endif
