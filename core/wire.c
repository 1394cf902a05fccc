#include "wire.h"

#include <string.h>
#include <strings.h>

enum chunk_state { CH_SIZE, CH_DATA, CH_DATA_END, CH_TRAILER };

size_t brm_wire_skip_blank(const char *buf, size_t len) {
    size_t n = 0;
    while (n < len && (buf[n] == '\r' || buf[n] == '\n')) n++;
    return n;
}

enum brm_wire_status brm_wire_head_end(const char *buf, size_t len, size_t *scan,
                                       size_t *head_len) {
    size_t limit = len < BRM_WIRE_MAX_HEAD ? len : BRM_WIRE_MAX_HEAD;
    for (size_t i = *scan; i < limit; i++) {
        if (buf[i] != '\n') continue;
        if ((i >= 1 && buf[i - 1] == '\n') ||
            (i >= 2 && buf[i - 1] == '\r' && buf[i - 2] == '\n')) {
            *head_len = i + 1;
            return BRM_WIRE_DONE;
        }
    }
    if (*scan < limit) *scan = limit;
    return len >= BRM_WIRE_MAX_HEAD ? BRM_WIRE_TOO_LARGE : BRM_WIRE_MORE;
}

/* ---- the head ----------------------------------------------------------- */

/* RFC 9110 5.6.2 tchar, the bytes of methods and field names: one bit
 * per byte value (none from 0x80 up). */
static const uint32_t tchars[8] = {
    0x00000000, /* 0x00-0x1f: none */
    0x03ff6cfa, /* 0x20-0x3f: ! # $ % & ' * + - . 0-9 */
    0xc7fffffe, /* 0x40-0x5f: A-Z ^ _ */
    0x57ffffff, /* 0x60-0x7f: ` a-z | ~ */
};

static int is_tchar(unsigned char ch) {
    return tchars[ch >> 5] >> (ch & 31) & 1;
}

static int is_digit(char ch) {
    return ch >= '0' && ch <= '9';
}

static int all_tchars(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)s[i])) return 0;
    return 1;
}

static int token_eq(const char *s, size_t n, const char *lit) {
    return strlen(lit) == n && strncasecmp(s, lit, n) == 0;
}

/* Does the comma-separated list S hold TOKEN? */
static int list_has(const char *s, size_t n, const char *token) {
    size_t i = 0;
    while (i < n) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == ',')) i++;
        size_t start = i;
        while (i < n && s[i] != ',') i++;
        size_t end = i;
        while (end > start && (s[end - 1] == ' ' || s[end - 1] == '\t')) end--;
        if (token_eq(s + start, end - start, token)) return 1;
    }
    return 0;
}

static enum brm_wire_method method_of(const char *p, size_t n) {
    /* Methods are case-sensitive. */
    if (n == 3 && memcmp(p, "GET", 3) == 0) return BRM_WIRE_GET;
    if (n == 4 && memcmp(p, "POST", 4) == 0) return BRM_WIRE_POST;
    if (n == 4 && memcmp(p, "HEAD", 4) == 0) return BRM_WIRE_HEAD;
    return BRM_WIRE_OTHER;
}

/* "POST /mist?x=1 HTTP/1.1", the line P[0, N) of the head at BUF. */
static int parse_request_line(const char *buf, const char *p, size_t n, struct brm_wire_head *h) {
    const char *sp1 = memchr(p, ' ', n);
    if (!sp1 || sp1 == p || !all_tchars(p, (size_t)(sp1 - p))) return 400;
    h->method = method_of(p, (size_t)(sp1 - p));
    const char *target = sp1 + 1, *end = p + n;
    const char *sp2 = memchr(target, ' ', (size_t)(end - target));
    if (!sp2 || sp2 == target) return 400;
    for (const char *q = target; q < sp2; q++) /* no CR, NUL or other control byte */
        if ((unsigned char)*q < 0x21 || *q == 0x7f) return 400;
    const char *version = sp2 + 1;
    size_t vlen = (size_t)(end - version);
    if (vlen != 8 || memcmp(version, "HTTP/", 5) != 0 || !is_digit(version[5]) ||
        version[6] != '.' || !is_digit(version[7]))
        return 400; /* not HTTP-version: "HTTP/" DIGIT "." DIGIT */
    if (memcmp(version + 5, "1.1", 3) == 0)
        h->http10 = 0;
    else if (memcmp(version + 5, "1.0", 3) == 0)
        h->http10 = 1;
    else
        return 505;
    const char *q = memchr(target, '?', (size_t)(sp2 - target));
    h->path = (size_t)(target - buf);
    h->path_len = (size_t)((q ? q : sp2) - target);
    h->keepalive = !h->http10;
    return 0;
}

/* Reads what a field that frames the message says. 0, or the status. */
static int framing_field(struct brm_wire_head *h, const char *name, size_t name_len, const char *v,
                         size_t value_len) {
    if (token_eq(name, name_len, "content-length")) {
        uint64_t len = 0;
        if (value_len == 0 || value_len > 18) return 400; /* 18 digits cannot overflow */
        for (size_t i = 0; i < value_len; i++) {
            if (v[i] < '0' || v[i] > '9') return 400;
            len = len * 10 + (uint64_t)(v[i] - '0');
        }
        if (h->has_length && h->content_length != len) return 400;
        h->content_length = len;
        h->has_length = 1;
    } else if (token_eq(name, name_len, "transfer-encoding")) {
        if (!token_eq(v, value_len, "chunked")) return 501;
        h->chunked = 1;
    } else if (token_eq(name, name_len, "connection")) {
        if (list_has(v, value_len, "close"))
            h->keepalive = 0;
        else if (list_has(v, value_len, "keep-alive"))
            h->keepalive = 1;
    } else if (token_eq(name, name_len, "expect")) {
        if (!token_eq(v, value_len, "100-continue")) return 417;
        h->expect_continue = 1;
    }
    return 0;
}

/* "Name: value", the line P[0, N) of the head at BUF. */
static int parse_field(const char *buf, const char *p, size_t n, struct brm_wire_head *h) {
    if (p[0] == ' ' || p[0] == '\t') return 400; /* obsolete line folding */
    const char *colon = memchr(p, ':', n);
    if (!colon || colon == p || !all_tchars(p, (size_t)(colon - p))) return 400;
    const char *v = colon + 1, *end = p + n;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    /* RFC 9110 5.5: a CR or NUL in a value is refused, not passed on, since
     * whoever reads the value next may take a CR for the end of a line. */
    size_t name_len = (size_t)(colon - p), value_len = (size_t)(end - v);
    if (memchr(v, '\r', value_len) || memchr(v, '\0', value_len)) return 400;
    if (h->nfields == BRM_WIRE_MAX_HEADERS) return 431;
    struct brm_wire_field *f = &h->fields[h->nfields++];
    f->name = (uint32_t)(p - buf);
    f->name_len = (uint32_t)name_len;
    f->value = (uint32_t)(v - buf);
    f->value_len = (uint32_t)value_len;
    return framing_field(h, p, name_len, v, value_len);
}

int brm_wire_parse_head(const char *buf, size_t len, struct brm_wire_head *h) {
    memset(h, 0, sizeof(*h));
    if (len > BRM_WIRE_MAX_HEAD) return 431; /* offsets are 32 bits, and heads are small */
    size_t pos = 0;
    int lines = 0;
    for (;;) {
        const char *p = buf + pos;
        const char *nl = memchr(p, '\n', len - pos);
        if (!nl) return 400; /* no empty line: not a whole head */
        size_t n = (size_t)(nl - p);
        pos += n + 1;
        if (n && p[n - 1] == '\r') n--;
        if (n == 0) break; /* the empty line */
        int rc = lines++ == 0 ? parse_request_line(buf, p, n, h) : parse_field(buf, p, n, h);
        if (rc) return rc;
    }
    if (lines == 0) return 400;
    if (h->chunked && h->has_length) return 400; /* RFC 9112 6.3: a smuggling sign */
    if (h->chunked && h->http10) return 400;
    return 0;
}

/* ---- chunked bodies ----------------------------------------------------- */

static int hex_digit(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* "1a;name=value": the size of a chunk, at most 16 hex digits (64 bits),
 * then whitespace or an extension. -1 when it is not one. */
static int chunk_size(const char *p, size_t n, uint64_t *size) {
    uint64_t v = 0;
    size_t i = 0;
    for (; i < n && i < 16; i++) {
        int d = hex_digit(p[i]);
        if (d < 0) break;
        v = v * 16 + (uint64_t)d;
    }
    if (i == 0 || (i < n && p[i] != ';' && p[i] != ' ' && p[i] != '\t')) return -1;
    *size = v;
    return 0;
}

/* One line of framing, P[0, N) without its line end. MORE: go on. */
static enum brm_wire_status chunk_line(struct brm_wire_chunked *ch, const char *p, size_t n,
                                       uint64_t max) {
    uint64_t size;
    switch (ch->state) {
    case CH_DATA_END: /* the line end after a chunk's data */
        if (n != 0) return BRM_WIRE_BAD;
        ch->state = CH_SIZE;
        return BRM_WIRE_MORE;
    case CH_SIZE:
        if (chunk_size(p, n, &size) < 0) return BRM_WIRE_BAD;
        if (size > max - ch->out) return BRM_WIRE_TOO_LARGE;
        ch->left = size;
        ch->state = size ? CH_DATA : CH_TRAILER;
        return BRM_WIRE_MORE;
    default: /* CH_TRAILER: fields are dropped; the empty line ends the body */
        return n == 0 ? BRM_WIRE_DONE : BRM_WIRE_MORE;
    }
}

static enum brm_wire_status decode(struct brm_wire_chunked *ch, char *buf, size_t len,
                                   uint64_t max) {
    for (;;) {
        char *p = buf + ch->in;
        size_t avail = len - ch->in;
        if (ch->state == CH_DATA) {
            size_t n = avail < ch->left ? avail : (size_t)ch->left;
            if (n == 0) return BRM_WIRE_MORE;
            memmove(buf + ch->out, p, n);
            ch->out += n;
            ch->in += n;
            ch->left -= n;
            if (ch->left == 0) ch->state = CH_DATA_END;
            continue;
        }
        const char *nl = memchr(p, '\n', avail);
        if (!nl) return avail > BRM_WIRE_MAX_CHUNK_LINE ? BRM_WIRE_BAD : BRM_WIRE_MORE;
        size_t n = (size_t)(nl - p);
        if (n > BRM_WIRE_MAX_CHUNK_LINE) return BRM_WIRE_BAD;
        ch->in += n + 1;
        if (n && p[n - 1] == '\r') n--;
        if (memchr(p, '\r', n) || memchr(p, '\0', n)) return BRM_WIRE_BAD;
        enum brm_wire_status st = chunk_line(ch, p, n, max);
        if (st != BRM_WIRE_MORE) return st;
    }
}

enum brm_wire_status brm_wire_chunked(struct brm_wire_chunked *ch, char *buf, size_t *len,
                                      uint64_t max) {
    enum brm_wire_status st = decode(ch, buf, *len, max);
    if (st == BRM_WIRE_MORE && ch->in > ch->out) {
        /* Drop the framing decoded so far: the buffer holds body only. */
        memmove(buf + ch->out, buf + ch->in, *len - ch->in);
        *len -= ch->in - ch->out;
        ch->in = ch->out;
    }
    return st;
}
