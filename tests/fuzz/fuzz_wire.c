/*
 * The HTTP request parser (core/wire.h) on what a client could send on one
 * connection: requests one after the other, as far as they parse. For each
 * it checks what the parser promises (offsets inside the head, no CR or
 * NUL in a value accepted, no body that is both chunked and measured), and
 * that feeding the bytes in small pieces, as slow clients do, gives the
 * same head and the same body as feeding them whole.
 */
#include <string.h>

#include "fuzz.h"
#include "wire.h"

#define MAX_BODY     4096 /* small, so the cap is reached */
#define MAX_REQUESTS 16

/* A piece size for the Ith feed, 1 to 13 bytes. */
static size_t piece(size_t i) {
    return 1 + (i * 7) % 13;
}

/* The end of the head found whole and found in pieces agree. */
static enum brm_wire_status head_end(const char *buf, size_t len, size_t *head_len) {
    size_t scan = 0, n = 0;
    enum brm_wire_status whole = brm_wire_head_end(buf, len, &scan, head_len);
    enum brm_wire_status st = BRM_WIRE_MORE;
    size_t fed = 0;
    scan = 0;
    for (size_t i = 0; st == BRM_WIRE_MORE && fed < len; i++) {
        fed += piece(i);
        if (fed > len) fed = len;
        st = brm_wire_head_end(buf, fed, &scan, &n);
    }
    MUST(st == whole);
    MUST(st != BRM_WIRE_DONE || n == *head_len);
    MUST(st != BRM_WIRE_DONE || (*head_len <= BRM_WIRE_MAX_HEAD && *head_len <= len));
    return whole;
}

static int is_tchar(unsigned char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* What an accepted head must be. */
static void check_head(const char *buf, size_t len, const struct brm_wire_head *h) {
    MUST(h->path + h->path_len <= len);
    MUST(h->nfields <= BRM_WIRE_MAX_HEADERS);
    for (size_t i = 0; i < h->path_len; i++) MUST((unsigned char)buf[h->path + i] > 0x20);
    for (size_t i = 0; i < h->nfields; i++) {
        const struct brm_wire_field *f = &h->fields[i];
        MUST(f->name_len > 0 && f->name + f->name_len <= len && f->value + f->value_len <= len);
        for (size_t j = 0; j < f->name_len; j++) MUST(is_tchar((unsigned char)buf[f->name + j]));
        MUST(!memchr(buf + f->value, '\r', f->value_len) &&
             !memchr(buf + f->value, 0, f->value_len));
    }
    MUST(!(h->chunked && h->has_length));
    MUST(!(h->chunked && h->http10));
    MUST(h->method == BRM_WIRE_GET || h->method == BRM_WIRE_POST || h->method == BRM_WIRE_HEAD ||
         h->method == BRM_WIRE_OTHER);
}

/* Decodes the chunked body at BODY[0, LEN) in place in BUF: whole. */
static enum brm_wire_status chunked_whole(const char *body, size_t len, char *buf,
                                          struct brm_wire_chunked *ch) {
    memcpy(buf, body, len);
    size_t n = len;
    enum brm_wire_status st = brm_wire_chunked(ch, buf, &n, MAX_BODY);
    MUST(ch->out <= MAX_BODY && ch->out <= ch->in && ch->in <= len && n <= len);
    MUST(st != BRM_WIRE_MORE || (ch->in == ch->out && n - ch->out <= BRM_WIRE_MAX_CHUNK_LINE));
    return st;
}

/* The same in pieces; *USED gets how many bytes of BODY the request took. */
static enum brm_wire_status chunked_pieces(const char *body, size_t len, char *buf,
                                           struct brm_wire_chunked *ch, size_t *used) {
    size_t fed = 0, n = 0;
    enum brm_wire_status st = BRM_WIRE_MORE;
    for (size_t i = 0; st == BRM_WIRE_MORE && fed < len; i++) {
        size_t k = piece(i) < len - fed ? piece(i) : len - fed;
        memcpy(buf + n, body + fed, k);
        fed += k;
        n += k;
        st = brm_wire_chunked(ch, buf, &n, MAX_BODY);
        /* The buffer holds the body and at most one line of framing. */
        MUST(st != BRM_WIRE_MORE || (n >= ch->out && n - ch->out <= BRM_WIRE_MAX_CHUNK_LINE));
    }
    *used = fed - (n - ch->in);
    return st;
}

/* Checks the chunked body at BODY[0, LEN). Returns the bytes the request
 * took, or 0 when it is refused or incomplete. */
static size_t check_chunked(const char *body, size_t len) {
    char *a = malloc(len + 1), *b = malloc(len + 1);
    struct brm_wire_chunked wa = { 0 }, wb = { 0 };
    size_t used = 0;
    enum brm_wire_status whole = chunked_whole(body, len, a, &wa);
    enum brm_wire_status pieces = chunked_pieces(body, len, b, &wb, &used);
    MUST(whole == pieces);
    if (whole == BRM_WIRE_DONE) {
        MUST(wa.out == wb.out && memcmp(a, b, wa.out) == 0);
        MUST(used == wa.in);
    }
    free(a);
    free(b);
    return whole == BRM_WIRE_DONE ? used : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *buf = malloc(size ? size : 1); /* exact: a read past the end is caught */
    memcpy(buf, data, size);
    size_t pos = 0;
    for (int r = 0; r < MAX_REQUESTS && pos < size; r++) {
        pos += brm_wire_skip_blank(buf + pos, size - pos);
        size_t head_len = 0;
        struct brm_wire_head h;
        if (head_end(buf + pos, size - pos, &head_len) != BRM_WIRE_DONE) break;
        if (brm_wire_parse_head(buf + pos, head_len, &h) != 0) break;
        check_head(buf + pos, head_len, &h);
        pos += head_len;
        if (h.chunked) {
            size_t used = check_chunked(buf + pos, size - pos);
            if (!used) break;
            pos += used;
        } else {
            if (h.content_length > size - pos) break;
            pos += (size_t)h.content_length;
        }
    }
    free(buf);
    return 0;
}
