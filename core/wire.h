/*
 * wire: HTTP/1.1 request framing (RFC 9112) as pure functions over bytes:
 * where a request head ends, what it says (the request line, the header
 * fields, and the fields that frame the message: Content-Length,
 * Transfer-Encoding, Connection, Expect), and the decoding of a chunked
 * body in place, a piece at a time as its bytes come. Bytes in, a request
 * head (or the status to refuse it with) out: no I/O, no allocation, no
 * state outside the caller's structs, so it is unit-tested and fuzzed on
 * its own. http keeps the connections and calls it. Depends on libc only.
 *
 * What it refuses, so that no two readers of a request can disagree on
 * where it ends (request smuggling): Content-Length with Transfer-Encoding,
 * two different Content-Lengths, a length that is not all digits, a
 * transfer coding other than chunked, chunked in HTTP/1.0, obsolete line
 * folding, whitespace before a field's colon, a CR that does not end a
 * line, a NUL in a field value, a control character in the request target,
 * and chunk sizes that are not hex or do not fit in 64 bits.
 */
#ifndef BRM_WIRE_H
#define BRM_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define BRM_WIRE_MAX_HEAD       16384 /* bytes of request line and header fields */
#define BRM_WIRE_MAX_HEADERS    64
#define BRM_WIRE_MAX_CHUNK_LINE 1024 /* bytes of a chunk-size or trailer line */

enum brm_wire_method {
    BRM_WIRE_GET = 1 << 0,
    BRM_WIRE_HEAD = 1 << 1,
    BRM_WIRE_POST = 1 << 2,
    BRM_WIRE_OTHER = 1 << 3,
};

enum brm_wire_status {
    BRM_WIRE_MORE = 0,       /* need more bytes */
    BRM_WIRE_DONE = 1,       /* complete */
    BRM_WIRE_BAD = -1,       /* malformed: 400 */
    BRM_WIRE_TOO_LARGE = -2, /* past a limit: 431 for a head, 413 for a body */
};

/* Where a header field sits in the head, as offsets from its start (a
 * buffer may move while the body comes; offsets stay true). */
struct brm_wire_field {
    uint32_t name, name_len, value, value_len;
};

struct brm_wire_head {
    enum brm_wire_method method;
    size_t path, path_len; /* offset and length of the target without its query */
    struct brm_wire_field fields[BRM_WIRE_MAX_HEADERS];
    size_t nfields;
    uint64_t content_length; /* 0 when none came */
    int has_length;          /* a Content-Length came */
    int chunked;             /* Transfer-Encoding: chunked */
    int http10;              /* HTTP/1.0, else HTTP/1.1 */
    int keepalive;           /* the connection may carry another request after this one */
    int expect_continue;     /* Expect: 100-continue */
};

/* How many bytes of blank lines (CR, LF) BUF[0, LEN) starts with: a client
 * may send some between two requests, to be skipped (RFC 9112 2.2). */
size_t brm_wire_skip_blank(const char *buf, size_t len);

/*
 * Looks for the empty line (CRLF or bare LF) that ends a request head in
 * BUF[0, LEN). *SCAN holds how far earlier calls searched (0 at first; the
 * call updates it), so bytes are searched once however they trickle in.
 * Returns BRM_WIRE_DONE with the head's length (the empty line included) in
 * *HEAD_LEN, BRM_WIRE_MORE, or BRM_WIRE_TOO_LARGE when the head passes
 * BRM_WIRE_MAX_HEAD bytes.
 */
enum brm_wire_status brm_wire_head_end(const char *buf, size_t len, size_t *scan, size_t *head_len);

/*
 * Parses the head BUF[0, LEN), as brm_wire_head_end measured it, into HEAD
 * (overwritten). Returns 0, or the status to refuse the request with: 400
 * malformed (see the list above), 431 more than BRM_WIRE_MAX_HEADERS fields,
 * 501 a transfer coding other than chunked, 417 an expectation other than
 * 100-continue, 505 an HTTP version other than 1.0 and 1.1. On a refusal
 * HEAD holds what was read before the fault.
 */
int brm_wire_parse_head(const char *buf, size_t len, struct brm_wire_head *head);

/* Where a chunked body's decoding stands; zero it before the first call. */
struct brm_wire_chunked {
    int state;     /* what the next bytes are: size line, data, data's CRLF, trailer */
    uint64_t left; /* bytes of the current chunk still to come */
    size_t out;    /* decoded body bytes, gathered at the front of the buffer */
    size_t in;     /* where the framing not decoded yet starts */
};

/*
 * Decodes a chunked body in place, as far as BUF[0, *LEN) goes; BUF starts
 * where the body does (just past the head). Decoded bytes are gathered at
 * the front: BUF[0, CH->out) is the body so far. Returns:
 *   BRM_WIRE_MORE: the framing decoded so far is dropped from BUF (*LEN
 *     shrinks to CH->out plus the bytes not decoded yet), so the buffer
 *     holds body bytes, not framing; append more at BUF + *LEN and call
 *     again;
 *   BRM_WIRE_DONE: the body is BUF[0, CH->out), and the request's bytes
 *     end at BUF + CH->in (what follows is the next request);
 *   BRM_WIRE_BAD: malformed framing (400);
 *   BRM_WIRE_TOO_LARGE: the body would pass MAX bytes (413).
 * Chunk extensions and trailer fields are read and dropped.
 */
enum brm_wire_status brm_wire_chunked(struct brm_wire_chunked *ch, char *buf, size_t *len,
                                      uint64_t max);

#endif
