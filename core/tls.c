#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <string.h>

/* struct brm_tls is an SSL_CTX and struct brm_tls_conn an SSL: OpenSSL
 * already counts their references and owns their memory. */
#define CTX(t)  ((SSL_CTX *)(t))
#define SSL_(c) ((SSL *)(c))

/* TLS 1.2's share of Mozilla's "intermediate" policy: ECDHE with AES-GCM
 * or ChaCha20-Poly1305. TLS 1.3's suites are all fine and stay as they are. */
#define CIPHERS                                                                                    \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

const char *brm_tls_error(char *buf, size_t size) {
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, size);
    else
        snprintf(buf, size, "%s", errno ? strerror(errno) : "connection closed");
    ERR_clear_error();
    return buf;
}

/* Only HTTP/1.1 is spoken: a client offering h2 alone gets no ALPN answer. */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl, (void)arg;
    for (unsigned int i = 0; i < inlen; i += 1u + in[i]) {
        if (in[i] == 8 && i + 9 <= inlen && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

struct brm_tls *brm_tls_new(const char *cert, const char *key, struct brm_err *err) {
    char why[256];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        brm_err_set(err, "TLS: %s", brm_tls_error(why, sizeof(why)));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    /* Partial writes, and a buffer that may move between retries: http.c
     * appends to its output while a write waits. Idle keep-alive
     * connections give their buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    if (SSL_CTX_set_cipher_list(ctx, CIPHERS) != 1) {
        brm_err_set(err, "TLS: %s", brm_tls_error(why, sizeof(why)));
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        brm_err_set(err, "TLS: cannot use the certificate %s: %s", cert,
                    brm_tls_error(why, sizeof(why)));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        brm_err_set(err, "TLS: cannot use the key %s: %s", key, brm_tls_error(why, sizeof(why)));
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        brm_err_set(err, "TLS: the key %s is not the certificate's (%s)", key, cert);
        goto fail;
    }
    return (struct brm_tls *)ctx;
fail:
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return NULL;
}

struct brm_tls *brm_tls_client_new(const char *ca, struct brm_err *err) {
    char why[256];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        brm_err_set(err, "TLS: %s", brm_tls_error(why, sizeof(why)));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = ca ? SSL_CTX_load_verify_locations(ctx, ca, NULL) == 1
                : SSL_CTX_set_default_verify_paths(ctx) == 1;
    if (!ok) {
        brm_err_set(err, "TLS: cannot use the CA %s: %s", ca ? ca : "(the system's)",
                    brm_tls_error(why, sizeof(why)));
        SSL_CTX_free(ctx);
        ERR_clear_error();
        return NULL;
    }
    return (struct brm_tls *)ctx;
}

struct brm_tls_conn *brm_tls_connect(struct brm_tls *t, int fd, const char *host) {
    SSL *ssl = SSL_new(CTX(t));
    struct in6_addr a6;
    struct in_addr a4;
    int ip = inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
    /* The certificate must name HOST (a name, or an address it lists). */
    int ok = ssl && SSL_set_fd(ssl, fd) == 1 &&
             (ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1
                 : SSL_set1_host(ssl, host) == 1 && SSL_set_tlsext_host_name(ssl, host) == 1);
    if (!ok) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_connect_state(ssl);
    return (struct brm_tls_conn *)ssl;
}

struct brm_tls *brm_tls_ref(struct brm_tls *t) {
    SSL_CTX_up_ref(CTX(t));
    return t;
}

void brm_tls_free(struct brm_tls *t) {
    if (t) SSL_CTX_free(CTX(t));
}

struct brm_tls_conn *brm_tls_accept(struct brm_tls *t, int fd) {
    SSL *ssl = SSL_new(CTX(t)); /* holds a reference to the context */
    if (!ssl || SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return (struct brm_tls_conn *)ssl;
}

void brm_tls_conn_free(struct brm_tls_conn *c) {
    if (!c) return;
    if (SSL_is_init_finished(SSL_(c)) && SSL_shutdown(SSL_(c)) < 0) { /* best effort */
    }
    ERR_clear_error();
    SSL_free(SSL_(c));
}

/* What the last call on C needs, from its return value RC. */
static enum brm_tls_io outcome(struct brm_tls_conn *c, int rc) {
    switch (SSL_get_error(SSL_(c), rc)) {
    case SSL_ERROR_NONE: return BRM_TLS_OK;
    case SSL_ERROR_WANT_READ: return BRM_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return BRM_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return BRM_TLS_CLOSED;
    case SSL_ERROR_SYSCALL: return BRM_TLS_CLOSED; /* EOF, or a reset */
    default: return BRM_TLS_FAILED;
    }
}

enum brm_tls_io brm_tls_handshake(struct brm_tls_conn *c) {
    ERR_clear_error();
    int rc = SSL_do_handshake(SSL_(c));
    return rc == 1 ? BRM_TLS_OK : outcome(c, rc);
}

size_t brm_tls_read(struct brm_tls_conn *c, void *buf, size_t n, enum brm_tls_io *io) {
    size_t got = 0;
    ERR_clear_error();
    int rc = SSL_read_ex(SSL_(c), buf, n, &got);
    *io = rc == 1 ? BRM_TLS_OK : outcome(c, rc);
    return rc == 1 ? got : 0;
}

size_t brm_tls_write(struct brm_tls_conn *c, const void *buf, size_t n, enum brm_tls_io *io) {
    size_t put = 0;
    ERR_clear_error();
    int rc = SSL_write_ex(SSL_(c), buf, n, &put);
    *io = rc == 1 ? BRM_TLS_OK : outcome(c, rc);
    return rc == 1 ? put : 0;
}

int brm_tls_pending(const struct brm_tls_conn *c) {
    return SSL_has_pending(SSL_(c));
}
