/* intake: which signature headers make a body worth reading. A header that
 * cannot be a signature is refused from the head, so an unsigned client
 * cannot make brume take in its body by sending any value. */
#include "intake.h"
#include "test.h"

#define V2 "0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef"
#define V1 "0123456789abcdefABCDEF0123456789abcdef01"

static const char *refuse(const struct brm_source *s, const char *v2, const char *v1) {
    return brm_intake_refuse_head(s, v2, v2 ? strlen(v2) : 0, v1, v1 ? strlen(v1) : 0);
}

int main(void) {
    struct brm_source signed_src = { .nsecrets = 1 };
    struct brm_source legacy = { .nsecrets = 1, .allow_sha1 = 1 };
    struct brm_source open = { .insecure = 1 };
    CHECK(refuse(&signed_src, V2, NULL) == NULL);
    CHECK_STR(refuse(&signed_src, NULL, NULL), "missing signature");
    CHECK_STR(refuse(&signed_src, NULL, V1), "missing signature"); /* v1 not allowed here */
    CHECK(refuse(&legacy, NULL, V1) == NULL);
    CHECK(refuse(&legacy, V2, "x") == NULL); /* v2 decides when both come */
    CHECK_HAS(refuse(&legacy, "x", V1), "malformed X-Mist-Signature-v2");
    CHECK(refuse(&open, NULL, NULL) == NULL);
    CHECK(refuse(&open, "junk", "junk") == NULL);
    /* The shape: exactly 64 (v2) or 40 (v1) hex digits, either case. */
    static const char *const bad_v2[] = {
        "",
        "x",
        V1,
        V2 "0",
        "g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde ",
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(bad_v2); i++)
        CHECK_STR(refuse(&signed_src, bad_v2[i], NULL),
                  "malformed X-Mist-Signature-v2 (64 hex digits)");
    static const char *const bad_v1[] = { "", V2, V1 "0",
                                          "0123456789abcdefABCDEF0123456789abcdef0:" };
    for (size_t i = 0; i < BRM_ARRAY_LEN(bad_v1); i++)
        CHECK_STR(refuse(&legacy, NULL, bad_v1[i]), "malformed X-Mist-Signature (40 hex digits)");
    return test_done();
}
