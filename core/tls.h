/*
 * tls: TLS for the listeners, with OpenSSL, on the connection's own
 * non-blocking socket. http.c does its own reads and writes (one read and
 * one write per keep-alive request); this module gives it the same calls
 * with TLS in between, and says when OpenSSL needs the socket readable or
 * writable before it can go on. A context holds a certificate chain and its
 * key: TLS 1.2 and 1.3, forward-secret AEAD ciphers only, no renegotiation,
 * no compression, ALPN http/1.1. Contexts are reference-counted and shared
 * by every worker; a reload makes new ones, and connections keep the one
 * they were accepted with. The client side (brm_tls_client_new,
 * brm_tls_connect) serves connections brume makes itself (to Redis): the
 * server's certificate must chain to the CA given (or the system's) and
 * name the host. Depends on OpenSSL's libssl, util.
 */
#ifndef BRM_TLS_H
#define BRM_TLS_H

#include <stddef.h>
#include <sys/types.h>

#include "util.h"

struct brm_tls;
struct brm_tls_conn;

/* A context for CERT (a PEM chain, the server's certificate first) and KEY
 * (PEM). NULL with ERR set when they cannot be read or do not match. */
struct brm_tls *brm_tls_new(const char *cert, const char *key, struct brm_err *err);
/* A client context: servers' certificates are checked against the CA in
 * the PEM file CA (NULL: the system's). NULL with ERR set when CA cannot
 * be read. */
struct brm_tls *brm_tls_client_new(const char *ca, struct brm_err *err);
/* Another reference to T. */
struct brm_tls *brm_tls_ref(struct brm_tls *t);
/* Drops a reference (NULL is fine). */
void brm_tls_free(struct brm_tls *t);

enum brm_tls_io {
    BRM_TLS_OK,         /* done */
    BRM_TLS_WANT_READ,  /* call again when the socket is readable */
    BRM_TLS_WANT_WRITE, /* ...writable */
    BRM_TLS_CLOSED,     /* the peer closed */
    BRM_TLS_FAILED,     /* a protocol or socket error: close */
};

/* A server-side connection on FD under T (it takes a reference to T). */
struct brm_tls_conn *brm_tls_accept(struct brm_tls *t, int fd);
/* A client-side connection on FD under the client context T, to HOST (a
 * name, sent as SNI, or an address): the handshake fails unless the
 * server's certificate names it. NULL when OpenSSL refuses. */
struct brm_tls_conn *brm_tls_connect(struct brm_tls *t, int fd, const char *host);
/* Sends close_notify if the socket takes it now, and frees C; the caller
 * closes the socket. */
void brm_tls_conn_free(struct brm_tls_conn *c);

enum brm_tls_io brm_tls_handshake(struct brm_tls_conn *c);
/* Reads at most N bytes into BUF: returns how many (> 0), or 0 with *IO
 * saying why not. */
size_t brm_tls_read(struct brm_tls_conn *c, void *buf, size_t n, enum brm_tls_io *io);
/* Writes at most N bytes of BUF: returns how many, or 0 with *IO set.
 * After a WANT, call again with the same bytes first (more may follow
 * them; the buffer may have moved). */
size_t brm_tls_write(struct brm_tls_conn *c, const void *buf, size_t n, enum brm_tls_io *io);
/* 1 when decrypted bytes wait inside OpenSSL: no readable event will
 * announce them. */
int brm_tls_pending(const struct brm_tls_conn *c);
/* A one-line reason for the last failure of this thread, for logs. */
const char *brm_tls_error(char *buf, size_t size);

#endif
